"""The sweep: `python -m src.sweep -m` runs an Optuna study over the training config.

One command, from the top:
    __main__.py   the Hydra entry point          engine.py     check everything, start workers, finish
    settings.py   the sweeper's config schema    context.py    `Sweep`: what every phase reads
    space.py      search syntax -> distributions samplers.py / pruning.py   by name, seeded per trial
    processes.py  local worker processes, signals
One worker:
    worker.py     warm up, search, then confirm  loop.py       the claim-and-drain loop every phase runs
    search.py     the search's policy            confirm.py    top-k over seeds, the winner's test runs
    runner.py     one trial as a Hydra job       batch_runner.py  K trials as one program
    compose.py    trial configs, fast            task.py       what each trial runs
    outcome.py    `TrialOutcome` and the one `tell`
The study:
    storage.py    URL, masking, retries, errors  study.py      open, search space, best trial
    budget.py     the budget rules (pure)        recovery.py   trials cut short: given back, queued again
    optuna_internals.py / hydra_internals.py   the private APIs used, one adapter per library
Results:
    results.py    the CSV tables and YAML files  progress.py   what is printed
    tracking.py   MLflow    hparams.py   TensorBoard's HParams    wandb_tracking.py   Weights & Biases
    launch.py     the workers as jobs of a Hydra launcher (SLURM, Ray, Dask, ...)
"""
