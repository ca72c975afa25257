"""TensorBoard files written without TensorFlow, with TensorBoard's own protobufs and event writer: what the
sweep command writes (a sweep's HParams experiment) and what a run trained outside Keras's `fit` writes (a
batched trial: its per-epoch scalars, final metrics and HParams session), in the layout Keras's TensorBoard
callback and `src/tracking.py` give a lone run:

    <run>/tensorboard/train/       epoch_loss, epoch_accuracy    (step: epoch - 1, as Keras counts)
    <run>/tensorboard/validation/  epoch_loss, epoch_accuracy
    <run>/tensorboard/             the final metrics (FINAL, at the last step) and the HParams session

TensorBoard keeps the first HParams session a run has, so each is written once, when its values are known.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    import pandas as pd

LOG_DIR = "tensorboard"  # in a run's folder
FINAL = ("accuracy", "loss", "val_accuracy", "val_loss", "best_val_accuracy", "epochs", "param_count")


def write_run(log_dir: Path, history: pd.DataFrame, param_count: int) -> None:
    """A run's scalars from its history (columns epoch, accuracy, loss, val_accuracy, val_loss)."""
    for folder, prefix in (("train", ""), ("validation", "val_")):
        write_scalars(log_dir / folder, {f"epoch_{name}": [(int(e) - 1, float(v)) for e, v in
                                                           zip(history["epoch"], history[f"{prefix}{name}"])]
                                         for name in ("loss", "accuracy")})
    if len(history):
        last, step = history.iloc[-1], int(history["epoch"].iloc[-1]) - 1
        final = {"accuracy": last["accuracy"], "loss": last["loss"], "val_accuracy": last["val_accuracy"],
                 "val_loss": last["val_loss"], "best_val_accuracy": history["val_accuracy"].max(),
                 "epochs": len(history), "param_count": param_count}
        write_scalars(log_dir, {name: [(step, float(value))] for name, value in final.items()})


def write_scalars(log_dir: Path, series: Mapping[str, list[tuple[int, float]]]) -> None:
    """Scalar summaries as TensorFlow 2 writes them (a float tensor with the scalars plugin's metadata)."""
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.scalar import metadata
    from tensorboard.util import tensor_util

    summaries = []
    for tag, points in series.items():
        for i, (step, value) in enumerate(points):
            summary = summary_pb2.Summary()
            value_pb = summary.value.add(tag=tag, tensor=tensor_util.make_tensor_proto(value, dtype="float32"))
            if i == 0:  # the plugin's metadata once per tag, as TensorFlow's writer does
                value_pb.metadata.CopyFrom(metadata.create_summary_metadata("", ""))
            summaries.append((step, summary))
    _write(log_dir, summaries)


def write_session(log_dir: Path, values: Mapping[str, Any], group: str, start: float | None = None) -> None:
    """The run's HParams session: its values (numbers, strings, booleans; anything else as its text)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    info = plugin_data_pb2.SessionStartInfo(group_name=group, start_time_secs=start or time.time())
    for name, value in values.items():
        if isinstance(value, bool):
            info.hparams[name].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[name].number_value = value
        else:
            info.hparams[name].string_value = str(value)
    _write(log_dir, [(0, _hparams_summary("session_start_info", plugin_data_pb2.HParamsPluginData(session_start_info=info)))])


def write_experiment(folder: Path, hparam_infos: list[Any], metrics: tuple[str, ...] = FINAL) -> None:
    """An HParams experiment (the columns of TensorBoard's HParams tab) at `folder`, once."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    if list(folder.glob("events.out.tfevents.*.experiment")):
        return
    experiment = api_pb2.Experiment(hparam_infos=hparam_infos, time_created_secs=time.time(),
                                    metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t)) for t in metrics])
    _write(folder, [(0, _hparams_summary("experiment", plugin_data_pb2.HParamsPluginData(experiment=experiment)))],
           suffix=".experiment")


def _hparams_summary(what: str, data: Any) -> Any:
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import metadata

    summary = summary_pb2.Summary()
    summary.value.add(tag=f"_hparams_/{what}", metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
    return summary


def _write(log_dir: Path, summaries: list[tuple[int, Any]], suffix: str = "") -> None:
    """The summaries, in an event file of their own in `log_dir`."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    log_dir.mkdir(parents=True, exist_ok=True)
    writer = EventFileWriter(str(log_dir), filename_suffix=suffix)
    for step, summary in summaries:
        writer.add_event(event_pb2.Event(summary=summary, wall_time=time.time(), step=step))
    writer.close()
