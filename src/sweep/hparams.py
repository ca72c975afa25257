"""TensorBoard's HParams view of a sweep (`trainer.tensorboard: true`): the experiment at the sweep folder's root
(each searched param with its range, `trial` and `state`; the metrics each run logs), and each told search
trial's session (its params, trial number and state) in its run's `tensorboard/` folder, where the run's
HParams callback left its final metrics. TensorBoard's own protobufs and event writer: no TensorFlow here.

A session is written once, when the trial's state is known: TensorBoard keeps the first one a run has.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial

METRICS = ("val_accuracy", "val_loss", "accuracy", "loss", "best_val_accuracy", "epochs", "param_count")
STATES = ("COMPLETE", "PRUNED", "FAIL")
LOG_DIR = "tensorboard"  # a run's, as src/tracking.py writes it


def write_experiment(folder: Path, distributions: dict[str, BaseDistribution], n_trials: int | None) -> None:
    """The experiment at `folder` (once: a resumed or second command finds it there)."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    if list(folder.glob("events.out.tfevents.*.hparams")):
        return
    infos = [_info(name, dist) for name, dist in distributions.items()]
    infos.append(api_pb2.HParamInfo(name="trial", type=api_pb2.DATA_TYPE_FLOAT64,
                                    domain_interval=api_pb2.Interval(min_value=0, max_value=max((n_trials or 1) - 1, 0))))
    infos.append(_discrete("state", api_pb2.DATA_TYPE_STRING, list(STATES)))
    metrics = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in METRICS]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=time.time())
    _write(folder, "experiment", plugin_data_pb2.HParamsPluginData(experiment=experiment))


class SessionWriter:
    """Called with (study, trial) after each search trial is told: writes its session where its run logged."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from tensorboard.plugins.hparams import plugin_data_pb2

        log_dir = Path(str(trial.user_attrs.get("run_dir", ""))) / LOG_DIR
        if not log_dir.is_dir():  # failed before training started
            return
        start = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        info = plugin_data_pb2.SessionStartInfo(group_name=str(trial.number), start_time_secs=start)
        for name, value in {**trial.params, "trial": trial.number, "state": trial.state.name}.items():
            if isinstance(value, bool):
                info.hparams[name].bool_value = value
            elif isinstance(value, (int, float)):
                info.hparams[name].number_value = value
            else:
                info.hparams[name].string_value = str(value)
        _write(log_dir, "session_start_info", plugin_data_pb2.HParamsPluginData(session_start_info=info))


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


def _write(log_dir: Path, what: str, data: Any) -> None:
    """One summary of the HParams plugin (`what`: experiment or session_start_info) in an event file of its own."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.hparams import metadata
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    summary = summary_pb2.Summary()
    summary.value.add(tag=f"_hparams_/{what}", metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
    writer = EventFileWriter(str(log_dir), filename_suffix=".hparams")
    writer.add_event(event_pb2.Event(summary=summary, wall_time=time.time(), step=0))
    writer.close()
