"""K trials of one worker trained at once (`hydra.sweeper.batch_trials`).

The worker asks K trials; each draws its params and composes its config as it would alone; those whose
networks share a structure train as one program (`src.batch_training`), each reporting every epoch to
the pruner through its own hook; then each is written and told as if it had trained alone: the same
folder (.hydra/config.yaml, history.csv, metrics.json, model.keras when asked) and the same trial record.
A trial the batched path cannot express (a user's model, batch norm, another loss, callbacks...) trains
alone, with a note.
"""
from __future__ import annotations

from typing import Any

import optuna
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from src.backend import use_backend
from src.errors import UserError
from src.files import write_csv, write_json, write_text
from src.sweep.pruning import PruningHook
from src.sweep.runner import Runner

Member = tuple[optuna.Trial, DictConfig, DictConfig]  # the trial, its Hydra job config, its task config


class Batcher:
    """One per worker process: it keeps the compiled programs of the structures it has trained."""

    def __init__(self, runner: Runner, task_config: DictConfig) -> None:
        use_backend(task_config.trainer.backend)  # before Keras loads, as the task would
        from src.batch_training import BatchTrainer  # Keras: the worker's warm-up has usually loaded it

        self.runner, self.trainer, self.noted = runner, BatchTrainer(), False

    def run(self, study: optuna.Study, trials: list[optuna.Trial], pruning: bool) -> int:
        """Train `trials` (claimed and beating) in as few programs as their structures allow; tell each.
        Returns what counts towards `max_trials_per_worker`: each trial trained alone (it builds its own
        Keras model) and each group (one program for them all)."""
        from src.batch_training import group_key
        from src.config import check

        batchable: list[Member] = []
        alone = 0
        for trial in trials:
            params = self.runner.draw(study, trial)
            overrides = self.runner.space.overrides(params) + self.runner.keep
            try:
                job = self.runner.job_config(overrides, trial.number)
                cfg = _task_config(job)
                check(cfg)
                key = group_key(cfg)
            except Exception as e:  # as the task would fail alone: that trial FAIL, with one line
                message = f"cannot compose {' '.join(overrides)}: {e}" if isinstance(e, HydraException) else e
                self.runner.finish(study, trial, UserError(message) if isinstance(message, str) else message,
                                   self.runner.hook(trial, pruning))
                continue
            if key is None:
                if not self.noted:
                    print(f"note: trial {trial.number} trains alone: the batched path trains plain dense networks "
                          f"(adam or sgd, cross-entropy, no batch norm, input dropout or callbacks)", flush=True)
                    self.noted = True
                self.runner.train_alone(study, trial, params, pruning)
                alone += 1
                continue
            batchable.append((trial, job, cfg))
        groups = self.trainer.groups([cfg for _, _, cfg in batchable])
        for group in groups:
            self._train(study, [batchable[i] for i in group], pruning)
        return alone + len(groups)

    def _train(self, study: optuna.Study, members: list[Member], pruning: bool) -> None:
        """One group as one program; then each trial's files and its result told."""
        hooks = [self.runner.hook(trial, pruning) for trial, _, _ in members]
        errors: dict[int, Exception] = {}

        def report(k: int, epoch: int, logs: dict[str, float]) -> bool:
            """Trial k's epoch to its pruner; a storage error there stops that trial only, as it would alone."""
            try:
                return hooks[k](epoch, logs)
            except Exception as e:  # noqa: BLE001
                errors[k] = e
                return True

        for hook, (_, _, cfg) in zip(hooks, members):
            hook.epochs = cfg.trainer.epochs
        try:
            results: list[Any] = self.trainer.train_group([cfg for _, _, cfg in members], on_epoch=report)
        except Exception as e:  # noqa: BLE001 - what would fail each trial alone fails each here
            results = [e] * len(members)
        for k, ((trial, job, cfg), result, hook) in enumerate(zip(members, results, hooks)):
            try:
                outcome = errors.get(k) or result
                if not isinstance(outcome, BaseException):
                    outcome = self._write(k, job, cfg, outcome, hook)
            except Exception as e:  # noqa: BLE001 - e.g. a full disk: this trial FAIL, as Hydra's job would
                outcome = e
            self.runner.finish(study, trial, outcome, hook)

    def _write(self, k: int, job: DictConfig, cfg: DictConfig, metrics: dict[str, Any],
               hook: PruningHook) -> dict[str, Any] | UserError:
        """Trial k's folder as `src.training.run` and Hydra's job leave it (its log aside: a batch trains in
    one program); its metrics, or its divergence."""
        out = self.runner.folder / str(job.hydra.sweep.subdir)
        write_text(out / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
        write_text(out / ".hydra" / "hydra.yaml", OmegaConf.to_yaml({"hydra": job.hydra}))  # passwords masked
        write_text(out / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(list(job.hydra.overrides.task)))
        history = metrics.pop("history")
        write_csv(out / "history.csv", history)
        write_json(out / "metrics.json", metrics)
        if metrics.get("error") == "diverged":
            return UserError(f"diverged: the loss became NaN in epoch {len(history)} "
                             f"(optimizer={cfg.optimizer.name}, lr={cfg.optimizer.lr}); try a lower optimizer.lr")
        if cfg.trainer.get("save_model") and hook.pruned_at is None:  # a pruned trial is never a winner
            self.trainer.keras_model(k, cfg).save(out / "model.keras")
        return metrics


def _task_config(job: DictConfig) -> DictConfig:
    """The task's part of a job config (what `python -m src.train` composes), without the hydra node."""
    cfg = job.copy()
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
