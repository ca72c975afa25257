"""TensorBoard's HParams view of a sweep (`trainer.tensorboard: true`): the experiment at the sweep folder's root
(each searched param with its range, `trial` and `state`; the metrics each run logs), and each told search
trial's session (its params, trial number and state) in its run's `tensorboard/` folder, where its training
left its scalars. Written with src/tensorboard_logs.py: no TensorFlow in the sweep command.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial

from ..tensorboard_logs import LOG_DIR, write_experiment, write_session

STATES = ("COMPLETE", "PRUNED", "FAIL")


def write_sweep_experiment(folder: Path, distributions: dict[str, BaseDistribution], n_trials: int) -> None:
    """The experiment at `folder` (once: a resumed or second command finds it there)."""
    from tensorboard.plugins.hparams import api_pb2

    infos = [_info(name, dist) for name, dist in distributions.items()]
    infos.append(api_pb2.HParamInfo(name="trial", type=api_pb2.DATA_TYPE_FLOAT64,
                                    domain_interval=api_pb2.Interval(min_value=0, max_value=max(n_trials - 1, 0))))
    infos.append(_discrete("state", api_pb2.DATA_TYPE_STRING, list(STATES)))
    write_experiment(folder, infos)


class SessionWriter:
    """Called with (study, trial) after each search trial is told: writes its session where its run logged."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        log_dir = Path(str(trial.user_attrs.get("run_dir", ""))) / LOG_DIR
        if log_dir.is_dir():  # not when the trial failed before training
            write_session(log_dir, {**trial.params, "trial": trial.number, "state": trial.state.name},
                          group=str(trial.number), start=trial.datetime_start.timestamp() if trial.datetime_start else None)


def _info(name: str, dist: BaseDistribution) -> Any:
    from tensorboard.plugins.hparams import api_pb2

    if not isinstance(dist, CategoricalDistribution):
        return api_pb2.HParamInfo(name=name, type=api_pb2.DATA_TYPE_FLOAT64,
                                  domain_interval=api_pb2.Interval(min_value=dist.low, max_value=dist.high))
    choices = list(dist.choices)
    if all(isinstance(c, bool) for c in choices):
        return _discrete(name, api_pb2.DATA_TYPE_BOOL, choices)
    if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices):
        return _discrete(name, api_pb2.DATA_TYPE_FLOAT64, choices)
    return _discrete(name, api_pb2.DATA_TYPE_STRING, [str(c) for c in choices])


def _discrete(name: str, kind: int, choices: list[Any]) -> Any:
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import api_pb2

    values = struct_pb2.ListValue()
    values.extend(choices)
    return api_pb2.HParamInfo(name=name, type=kind, domain_discrete=values)
