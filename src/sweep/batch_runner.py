"""K trials of one worker trained at once (`hydra.sweeper.batch_trials`).

The worker asks K trials; each draws its params and composes its config as it would alone; those whose
networks share a structure train as one program (`src.batch_training`), each reporting every epoch to
the pruner through its own hook; then each is written and told as if it had trained alone: the same
folder (.hydra/config.yaml, history.csv, metrics.json, model.keras when asked) and the same trial record.
A trial the batched path cannot express (a user's model, another loss or optimizer, callbacks...) trains
alone, with a note. The confirmation runs take the same path (`BatchRunner.train`), with no pruning hook.
"""
from __future__ import annotations

from typing import Any, Callable

import optuna
from omegaconf import DictConfig, OmegaConf

from ..backend import use_backend
from ..errors import UserError
from ..files import write_csv, write_json, write_text
from ..metrics import diverged
from ..tensorboard_logs import LOG_DIR, write_run
from .outcome import TrialOutcome
from .pruning import PruningHook
from .runner import Runner, task_config

Member = tuple[int, DictConfig, DictConfig]  # the job's index, its Hydra job config, its task config
Told = Callable[[int, TrialOutcome], None]  # (job index, what it came to): tell the study


class BatchRunner:
    """The batched counterpart of `Runner`, one per worker process: it keeps the compiled programs of the
    structures it has trained."""

    def __init__(self, runner: Runner, task_config: DictConfig) -> None:
        use_backend(task_config.trainer.backend)  # before Keras loads, as the task would
        from ..batch_training import BatchTrainer  # Keras: the worker's warm-up has usually loaded it

        self.runner, self.trainer, self.noted = runner, BatchTrainer(), False
        self.together = True  # False once a claim of several trials trained none together: claim one at a time

    def run(self, study: optuna.Study, trials: list[optuna.Trial], pruning: bool) -> int:
        """Search trials (claimed and beating): draw each one's params, train them in as few programs as their
        structures allow, tell each. Returns what counts towards `max_trials_per_worker` (see `train`)."""
        composed, jobs, hooks = [], [], []
        for trial in trials:
            overrides = self.runner.space.overrides(self.runner.draw(study, trial)) + self.runner.keep
            try:
                jobs.append(self.runner.job_config(overrides, trial.number))
            except UserError as e:  # as the task would fail alone: that trial FAIL, with one line
                self.runner.record(study, trial, TrialOutcome.failed(e))
                continue
            composed.append(trial)
            hooks.append(self.runner.hook(trial, pruning))
        return self.train(jobs, lambda i, outcome: self.runner.record(study, composed[i], outcome), hooks)

    def train(self, jobs: list[DictConfig], told: Told, hooks: list[PruningHook | None]) -> int:
        """Train Hydra jobs (their composed configs) in as few programs as their structures allow, each
        reporting its epochs to its hook; `told(i, outcome)` as each ends. A job the batched path cannot
        express runs alone as a Hydra job, with a note. Returns what counts towards `max_trials_per_worker`:
        each job trained alone (it builds its own Keras model) and each group (one program for them all)."""
        from ..batch_training import group_key
        from ..config import check

        batchable: list[Member] = []
        alone = 0
        for i, job in enumerate(jobs):
            try:
                cfg = task_config(job)
                check(cfg)
                key = group_key(cfg)
            except Exception as e:  # noqa: BLE001 - as the task would fail alone
                told(i, TrialOutcome.failed(e))
                continue
            if key is not None:
                batchable.append((i, job, cfg))
                continue
            if not self.noted:
                print(f"note: {job.hydra.sweep.subdir} trains alone: the batched path trains dense networks with adam, "
                      f"adamw, nadam, sgd or rmsprop, cross-entropy (label smoothing allowed), accuracy and EarlyStopping only",
                      flush=True)
                self.noted = True
            alone += 1
            told(i, self.runner.run_config(job, hooks[i]))
        groups = self.trainer.groups([cfg for _, _, cfg in batchable])
        for group, program in groups:
            self._train([batchable[g] for g in group], program, told, hooks)
        if len(jobs) > 1:  # claiming K pays only when they train together; else the sampler learns from each
            self.together = alone + len(groups) < len(jobs)
        return alone + len(groups)

    def _train(self, members: list[Member], program: Any, told: Told, hooks: list[PruningHook | None]) -> None:
        """One group as one program; then each job's files, and its outcome told."""
        errors: dict[int, Exception] = {}

        def report(k: int, epoch: int, logs: dict[str, float]) -> bool:
            """Member k's epoch to its pruner; a storage error there stops that trial only, as it would alone."""
            hook = hooks[members[k][0]]
            try:
                return hook(epoch, logs) if hook is not None else False
            except Exception as e:  # noqa: BLE001
                errors[k] = e
                return True

        for i, _, cfg in members:
            if hooks[i] is not None:
                hooks[i].epochs = cfg.trainer.epochs
        try:
            results: list[Any] = self.trainer.train_group([cfg for _, _, cfg in members], on_epoch=report, program=program)
        except Exception as e:  # noqa: BLE001 - what would fail each trial alone fails each here
            results = [e] * len(members)
        for k, ((i, job, cfg), result) in enumerate(zip(members, results)):
            try:
                returned = errors.get(k) or result
                if not isinstance(returned, BaseException):
                    returned = self._write(k, job, cfg, returned, hooks[i])
            except Exception as e:  # noqa: BLE001 - e.g. a full disk: this trial FAIL, as Hydra's job would
                returned = e
            hook = hooks[i]
            told(i, TrialOutcome.of(returned, self.runner.objectives, hook.pruned_at if hook is not None else None))

    def _write(self, k: int, job: DictConfig, cfg: DictConfig, metrics: dict[str, Any],
               hook: PruningHook | None) -> dict[str, Any] | UserError:
        """Trial k's folder as `src.training.run` and Hydra's job leave it (its log aside: a batch trains in
    one program); its metrics, or its divergence."""
        out = self.runner.folder / str(job.hydra.sweep.subdir)
        write_text(out / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
        write_text(out / ".hydra" / "hydra.yaml", OmegaConf.to_yaml({"hydra": job.hydra}))  # passwords masked
        write_text(out / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(list(job.hydra.overrides.task)))
        history = metrics.pop("history")
        write_csv(out / "history.csv", history)
        write_json(out / "metrics.json", metrics)
        if cfg.trainer.get("tensorboard"):  # its HParams session comes once it is told (src/sweep/hparams.py)
            write_run(out / LOG_DIR, history, metrics["param_count"])
        if metrics.get("error") == "diverged":
            return diverged(cfg, len(history))
        if cfg.trainer.get("save_model") and (hook is None or hook.pruned_at is None):  # a pruned trial is never a winner
            self.trainer.keras_model(k, cfg).save(out / "model.keras")
        return metrics

