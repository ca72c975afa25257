"""The sweep: `python -m src.sweep -m` runs an Optuna study over the training config.

    settings.py  the sweeper's config schema        space.py     search-space syntax -> distributions
    samplers.py  samplers by name, seeded per trial  pruning.py   pruners and the per-epoch hook
    study.py     storage, budget, dead workers       runner.py    one trial: params, Hydra job, tell
    workers.py   worker processes and signals        progress.py  what is printed
    results.py   the CSV tables and YAML files       engine.py    one command from start to finish
    task.py      what each trial runs                __main__.py  the Hydra entry point
"""
