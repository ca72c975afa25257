#!/usr/bin/env bash
# One study, many cluster nodes: each task of this array job runs the same sweep command on the
# shared PostgreSQL study. Submit with: sbatch examples/slurm_sweep.sh
#SBATCH --job-name=keras-sweep
#SBATCH --array=0-7                 # 8 nodes work on the study together
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=02:00:00
#SBATCH --signal=B:TERM@60          # a minute's notice: running trials are given back, not lost
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
source .venv/bin/activate
# Keep the password out of the job script and the command line: put it in the environment,
# e.g. `export OPTUNA_STORAGE=...` in ~/.bashrc (chmod 600) or your cluster's secret store.
: "${OPTUNA_STORAGE:?set OPTUNA_STORAGE=postgresql+psycopg2://USER:PASSWORD@HOST:5432/DB}"
export FASHION_MNIST_DIR="${FASHION_MNIST_DIR:-$HOME/data/fashion-mnist}"
# Every task: the same study, its own results folder; a node that dies has its trial retried elsewhere.
exec python -m src.sweep -m sweep=default \
  'hydra.sweeper.storage=${oc.env:OPTUNA_STORAGE}' \
  hydra.sweeper.n_workers="${SLURM_CPUS_PER_TASK:-1}" \
  hydra.sweep.dir="outputs/sweeps/default/node-${SLURM_ARRAY_TASK_ID:-0}"
