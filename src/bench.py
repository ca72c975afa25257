"""`python -m src.bench`: how fast the project trains and sweeps, against the plain-Keras peer, in one run.

    python -m src.bench                      # reference trial, peer, 1 vs 2 workers (3 rounds), memory
    python -m src.bench --json bench.json    # the table as JSON, to compare across commits
    python -m src.bench --backend jax        # the same on Keras's JAX backend (the peers' sweep S too)
    python -m src.bench --default-sweep      # also the default 40-trial sweep's wall time (~2 min)
    python -m src.bench --scale-out --only-scale-out --rounds 1   # the default sweep: 2 one-core workers vs 1
    python -m src.bench --results lesson,default   # the README's Results rows, rerun (src/bench_results.py)
    python -m src.bench --arithmetic         # matmul peak and each training path's GFLOP/s (src/bench_flops.py)

The reference trial (../shared/bench/README.md): classes 0-2, all 18,000 images, 784-10-10-3,
Adam 1e-3, batch 32, 10 epochs; its time runs from building the model to the validation score.
A benchmark, not a test: it asserts nothing, it measures.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from . import CONFIG_DIR, PACKAGE
from .bench_flops import REFERENCE

ROOT = Path(__file__).resolve().parents[1]


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def reference_trials(repeats: int, backend: str, extra: list[str]) -> dict:
    """The reference trial through src.training, `repeats` times in this process (data read once, first)."""
    from hydra import compose, initialize_config_dir

    from .backend import use_backend
    from .schema import register

    register()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", REFERENCE + [f"trainer.backend={backend}"] + extra)
    use_backend(backend)
    from . import training
    from .data import load

    load(cfg.data)  # read once, before timing: file reading is not part of a trial
    times, accs = [], []
    with tempfile.TemporaryDirectory() as out:
        for seed in range(repeats):
            cfg.trainer.seed = seed
            start = time.perf_counter()
            metrics = training.run(cfg, out)
            times.append(time.perf_counter() - start)
            accs.append(metrics["val_accuracy"])
    return {"median_s": statistics.median(times), "times_s": [round(t, 3) for t in times], "val_accuracy": accs,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def peer(script: Path, repeats: int) -> dict | None:
    """One of ../shared/bench's scripts in a subprocess (its own JSON line), or None when it cannot run."""
    if not script.is_file():
        return None
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}  # the peer is plain Keras on its default backend
    result = subprocess.run([sys.executable, script.name, "--repeats", str(repeats)], cwd=script.parent,
                            capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if result.returncode == 0 and lines else None


def sweep(folder: Path, overrides: list[str]) -> dict:
    """A sweep in a subprocess; trials per minute from its trials.csv (first start to last end) and wall time."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"{PACKAGE}.sweep", "-m", f"hydra.sweep.dir={folder}", *overrides], cwd=ROOT,
                   check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    trials = pd.read_csv(folder / "trials.csv", parse_dates=["datetime_start", "datetime_complete"])
    span = (trials["datetime_complete"].max() - trials["datetime_start"].min()).total_seconds()
    return {"trials": len(trials), "wall_s": wall, "trials_per_min": 60 * len(trials) / span,
            "val_accuracy_mean": trials["val_accuracy"].mean(), "rss_mb": trials["peak_rss_mb"].tolist()}


# The quick sweep's ranges as a 32-point grid, run whole: one and two workers run exactly the same
# trials. No worker is recycled in either (memory is measured apart), so that both pay the same.
QUICK_GRID = ["sweep=quick", "hydra.sweeper.confirm.top_k=0", "hydra.sweeper.sampler=grid", "hydra.sweeper.n_trials=32",
              "hydra.sweeper.pruner=none",
              "hydra.sweeper.max_trials_per_worker=32", "model.units=choice(8,16,32,64)", "model.layers=choice(1,2)",
              "model.activation=choice(relu,tanh)", "optimizer.lr=choice(0.001,0.01)"]


def worker_rounds(tmp: Path, rounds: int, backend: str) -> list[dict]:
    """1- and 2-worker sweeps of QUICK_GRID, alternating which runs first (this VM's speed drifts by a
    quarter within minutes); the median round is the figure."""
    results = []
    for r in range(rounds):
        runs = {}
        for workers in (1, 2) if r % 2 == 0 else (2, 1):
            runs[workers] = sweep(tmp / f"round{r}-{workers}", [*QUICK_GRID, f"hydra.sweeper.n_workers={workers}",
                                                               f"trainer.backend={backend}"])
        results.append({"one": runs[1], "two": runs[2], "speed_up": runs[2]["trials_per_min"] / runs[1]["trials_per_min"]})
    return results


def scale_out_rounds(tmp: Path, rounds: int, backend: str) -> list[dict]:
    """The default sweep, whole command, on one core with one worker against two cores with one worker each
    (each local worker pins itself to its core), alternating which runs first; the same study settings."""
    results = []
    for r in range(rounds):
        runs = {}
        for workers in (1, 2) if r % 2 == 0 else (2, 1):
            folder = tmp / f"scale{r}-{workers}"
            cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0))[:workers])
            start = time.perf_counter()
            subprocess.run(["taskset", "-c", cores, sys.executable, "-m", f"{PACKAGE}.sweep", "-m", f"hydra.sweep.dir={folder}",
                            f"hydra.sweeper.n_workers={workers}", f"trainer.backend={backend}"],
                           cwd=ROOT, check=True, capture_output=True, text=True)
            best, trials = yaml_load(folder / "best.yaml"), pd.read_csv(folder / "trials.csv")
            runs[workers] = {"s": time.perf_counter() - start, "winner": best["trial"],
                             "mean": best["confirmed"]["configs"][best["trial"]]["mean"],
                             "best_single": float(trials["value"].max()), "epochs": int(trials["epochs"].sum())}
        results.append({"one": runs[1], "two": runs[2], "speed_up": runs[1]["s"] / runs[2]["s"]})
    return results


# Sweep S of ../shared/bench/sweep_s (20 TPE trials, 3,000 images, 3 epochs, no pruning) as the project runs
# it: the same space and settings, no confirmation and no test replay (the plain script does neither).
SWEEP_S = ["hydra.sweeper.params=null", "hydra.sweeper.confirm.top_k=0", "hydra.sweeper.test_overrides=[]",
           "hydra.sweeper.n_trials=20", "hydra.sweeper.sampler=tpe", "hydra.sweeper.pruner=none", "data.n_train=3000",
           "model.units=tag(log, int(interval(8, 64)))", "model.layers=int(interval(1, 2))",
           "model.activation=choice(relu, tanh)", "optimizer.lr=tag(log, interval(1e-3, 1e-2))",
           "trainer.epochs=3", "trainer.batch_size=32"]


def sweep_s_rounds(tmp: Path, rounds: int, backend: str, peer_dir: Path) -> list[dict]:
    """Sweep S, whole processes timed from the command line: the project's sweep and the plain-Optuna script,
    alternating which runs first; best val_accuracy of each. The project's JAX compilation cache starts empty
    (round 1 compiles, later rounds load: a user's second sweep)."""
    script = peer_dir / "sweep_s" / "optuna_plain.py"
    fresh_cache = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache")}
    results = []
    for r in range(rounds):
        runs = {}
        for who in ("project", "plain") if r % 2 == 0 else ("plain", "project"):
            folder = tmp / f"s{r}-{who}"
            start = time.perf_counter()
            if who == "project":
                subprocess.run([sys.executable, "-m", f"{PACKAGE}.sweep", "-m", f"hydra.sweep.dir={folder}", *SWEEP_S,
                                f"trainer.backend={backend}"], cwd=ROOT, check=True, capture_output=True, text=True,
                               env=fresh_cache)
            else:
                subprocess.run([sys.executable, script.name, "--out", str(folder)], cwd=script.parent, check=True,
                               capture_output=True, text=True, env={**os.environ, "KERAS_BACKEND": backend})
            trials = pd.read_csv(folder / "trials.csv")
            runs[who] = {"s": time.perf_counter() - start, "best": float(trials["value"].max())}
        results.append(runs)
    return results


def scale_out_rows(rounds: list[dict]) -> dict[str, object]:
    return {
        "default sweep, whole command: s, 1 worker on 1 core / 2 workers on 1 core each, by round": [
            [round(r["one"]["s"], 1), round(r["two"]["s"], 1)] for r in rounds],
        "scale-out: 2 workers / 1 worker (median of rounds)": round(statistics.median(r["speed_up"] for r in rounds), 2),
        "scale-out: confirmed winner's mean val_accuracy, 1 / 2 workers, by round": [
            [round(r["one"]["mean"], 4), round(r["two"]["mean"], 4)] for r in rounds],
        "scale-out: best single trial val_accuracy, 1 / 2 workers, by round": [
            [round(r["one"]["best_single"], 4), round(r["two"]["best_single"], 4)] for r in rounds],
        "scale-out: epochs the search trained, 1 / 2 workers, by round": [
            [r["one"]["epochs"], r["two"]["epochs"]] for r in rounds],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="reference trials to take the median of")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the 1- vs 2-worker sweeps (median taken)")
    parser.add_argument("--memory-trials", type=int, default=100, help="trials of the flat-memory sweep")
    parser.add_argument("--backend", default="tensorflow", choices=("tensorflow", "jax"))
    parser.add_argument("--peer-dir", type=Path, default=ROOT.parent / "shared" / "bench")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--only-trial", action="store_true", help="skip the sweeps")
    parser.add_argument("--default-sweep", action="store_true", help="also time the default 40-trial sweep (~2 min)")
    parser.add_argument("--scale-out", action="store_true",
                        help="also the default sweep on 1 core / 1 worker against 2 cores / 2 workers (~10 min a round)")
    parser.add_argument("--only-scale-out", action="store_true", help="only the scale-out rounds")
    parser.add_argument("--results", metavar="ROWS", help="only the README's Results table, for these rows "
                        "(comma-separated: lesson, quick, default, fashion10)")
    parser.add_argument("--arithmetic", action="store_true", help="only this machine's float32 matmul peak and the "
                        "GFLOP/s each training path reaches (reference trial, a 16-trial batch, a fashion10 trial)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for the reference trial")
    args = parser.parse_args(argv)
    os.environ.setdefault("FASHION_MNIST_DIR", str(ROOT.parent / "shared" / "datasets" / "fashion-mnist"))
    if args.results:
        from .bench_results import table
        from .errors import UserError, exit_with

        try:
            print(table(args.results.split(",")))
        except UserError as e:
            exit_with(e)
        return 0
    if args.arithmetic:
        from .bench_flops import rates

        return report(rates(args.backend), args)
    if args.only_scale_out:
        with tempfile.TemporaryDirectory() as tmp:
            return report(scale_out_rows(scale_out_rounds(Path(tmp), args.rounds, args.backend)), args)

    rows: dict[str, object] = {}
    own = reference_trials(args.repeats, args.backend, args.overrides)
    rows["reference trial, project (s, median)"] = round(own["median_s"], 3)
    rows["reference trial, project val_accuracy"] = own["val_accuracy"]
    rows["reference trial, project peak RSS (MB)"] = round(own["peak_rss_mb"])
    keras_peer = peer(args.peer_dir / "plain_keras.py", args.repeats)
    if keras_peer:
        rows[f"reference trial, plain Keras peer on {keras_peer['backend']} (s, median)"] = keras_peer["median_s"]
        rows["reference trial, plain Keras peer val_accuracy"] = keras_peer["val_accuracy"]
        rows["ratio project / plain Keras"] = round(own["median_s"] / keras_peer["median_s"], 3)
    floor = peer(args.peer_dir / "floor_jax.py", args.repeats)
    if floor:
        rows["reference trial, JAX floor (s, median)"] = floor["median_s"]
        rows["ratio project / JAX floor"] = round(own["median_s"] / floor["median_s"], 2)

    if not args.only_trial:
        with tempfile.TemporaryDirectory() as tmp:
            if (args.peer_dir / "sweep_s" / "optuna_plain.py").is_file():
                s = sweep_s_rounds(Path(tmp), args.rounds, args.backend, args.peer_dir)
                rows["sweep S (20 trials): s, project / plain Optuna script, by round"] = [
                    [round(r["project"]["s"], 1), round(r["plain"]["s"], 1)] for r in s]
                rows["sweep S: ratio project / plain Optuna (median of rounds)"] = round(
                    statistics.median(r["project"]["s"] / r["plain"]["s"] for r in s), 2)
                rows["sweep S: best val_accuracy, project / plain (round 1)"] = [s[0]["project"]["best"], s[0]["plain"]["best"]]
            if args.default_sweep:
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", f"{PACKAGE}.sweep", "-m", f"hydra.sweep.dir={Path(tmp) / 'default'}",
                                f"trainer.backend={args.backend}"], cwd=ROOT, check=True, capture_output=True, text=True)
                board = yaml_load(Path(tmp) / "default" / "best.yaml")
                rows["default sweep (40 trials + confirmation): wall s"] = round(time.perf_counter() - start, 1)
                rows["default sweep: winner val_accuracy mean / test_accuracy mean"] = [
                    round(board["confirmed"]["configs"][board["trial"]]["mean"], 4), round(board["test"]["test_accuracy"], 4)]
            if args.scale_out:
                rows.update(scale_out_rows(scale_out_rounds(Path(tmp), args.rounds, args.backend)))
            rounds = worker_rounds(Path(tmp), args.rounds, args.backend)
            median = statistics.median(r["speed_up"] for r in rounds)
            rows["quick sweep grid (32 trials): trials/min, 1 / 2 workers, by round"] = [
                [round(r["one"]["trials_per_min"], 1), round(r["two"]["trials_per_min"], 1)] for r in rounds]
            rows["2-worker speed-up, by round"] = [round(r["speed_up"], 2) for r in rounds]
            rows["2-worker speed-up (median of rounds)"] = round(median, 2)
            rows["quick sweep grid: whole command s, 1 / 2 workers, by round"] = [  # start-up and finish included
                [round(r["one"]["wall_s"], 1), round(r["two"]["wall_s"], 1)] for r in rounds]
            rows["2-worker speed-up of the whole command (median of rounds)"] = round(
                statistics.median(r["one"]["wall_s"] / r["two"]["wall_s"] for r in rounds), 2)
            rows["quick sweep mean val_accuracy, 1 / 2 workers"] = [
                round(float(rounds[0][k]["val_accuracy_mean"]), 4) for k in ("one", "two")]
            memory = sweep(Path(tmp) / "memory", ["sweep=quick", "hydra.sweeper.confirm.top_k=0",
                                                  f"hydra.sweeper.n_trials={args.memory_trials}",
                                                  "hydra.sweeper.pruner=none", "data.n_train=600", "trainer.epochs=1",
                                                  f"trainer.backend={args.backend}"])
            rss = memory["rss_mb"]
            rows[f"{args.memory_trials}-trial sweep: trials/min"] = round(memory["trials_per_min"], 1)
            rows[f"{args.memory_trials}-trial sweep: peak RSS after trial 10 / at the end (MB)"] = [
                round(rss[min(9, len(rss) - 1)]), round(max(rss))]
            rows[f"{args.memory_trials}-trial sweep: end / trial 10"] = round(max(rss) / rss[min(9, len(rss) - 1)], 3)

    return report(rows, args)


def report(rows: dict[str, object], args: argparse.Namespace) -> int:
    """The table (and --json): with the date, the machine's cores and load, and the commit measured."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    width = max(map(len, rows))
    print(f"backend {args.backend}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, commit {commit or '?'}")
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps({"backend": args.backend, "commit": commit, **rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
