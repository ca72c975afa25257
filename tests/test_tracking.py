"""Tracking extras end to end on the real data: TensorBoard event files of a run (`trainer.tensorboard`),
and one MLflow run per sweep trial (`hydra.sweeper.mlflow`), read back with each tool's own reader."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from tensorboard.util.tensor_util import make_ndarray

from conftest import error_lines, run_cli
from src.sweep.settings import MlflowSettings, SweeperSettings
from src.sweep.storage import masking
from test_sweep import TINY, sweep, table

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")  # MLflow's SQLAlchemy use


def scalars(folder, tag):
    """{epoch step: value} of a scalar summary in an event-file folder (TF2 writes scalars as tensors)."""
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload()
    return {e.step: float(make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}


def hparams(folder):
    """The HParams summary's values in a run's tensorboard folder."""
    events = EventAccumulator(str(folder)).Reload()
    (content,) = events.PluginTagToContent("hparams").values()
    start = HParamsPluginData.FromString(content).session_start_info
    return {k: v.number_value if v.HasField("number_value") else v.string_value if v.HasField("string_value")
            else v.bool_value for k, v in start.hparams.items()}


@pytest.mark.slow
def test_tensorboard_logs_epoch_scalars_and_hparams(tmp_path, data_dir):
    out = tmp_path / "run"
    run_cli("train", f"hydra.run.dir={out}", "trainer.tensorboard=true", "trainer.verbose=0", "trainer.test=false",
            "trainer.epochs=2", "model.units=12")
    history = pd.read_csv(out / "history.csv")
    logs = out / "tensorboard"
    for folder, tag, column in (("validation", "epoch_accuracy", "val_accuracy"), ("validation", "epoch_loss", "val_loss"),
                                ("train", "epoch_accuracy", "accuracy"), ("train", "epoch_loss", "loss")):
        values = scalars(logs / folder, tag)
        assert sorted(values) == [0, 1], (folder, tag)
        assert [values[0], values[1]] == pytest.approx(history[column].tolist(), abs=1e-5), (folder, tag)
    values = hparams(logs)
    assert values["model.units"] == 12 and values["optimizer.name"] == "adam" and values["trainer.epochs"] == 2
    assert "data.path" not in values
    assert scalars(logs, "val_accuracy") == {1: pytest.approx(history["val_accuracy"].iloc[-1], abs=1e-5)}
    assert scalars(logs, "param_count") == {1: 784 * 12 + 12 + 12 * 12 + 12 + 12 * 3 + 3}


def hparams_tab(logdir) -> tuple[dict, dict]:
    """What TensorBoard's HParams tab shows for `logdir` (`tensorboard --logdir`): the experiment and the
    session groups, from the HParams plugin's own handlers over TensorBoard's own event reader."""
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import hparams_plugin
    from werkzeug.test import EnvironBuilder

    events = plugin_event_multiplexer.EventMultiplexer()
    events.AddRunsFromDirectory(str(logdir))
    events.Reload()
    apps = hparams_plugin.HParamsPlugin(base_plugin.TBContext(
        logdir=str(logdir), multiplexer=events,
        data_provider=data_provider.MultiplexerDataProvider(events, str(logdir)))).get_plugin_apps()

    def post(route: str, body: dict) -> dict:
        environ = EnvironBuilder(method="POST", path=route, data=json.dumps(body), content_type="application/json")
        status = {}
        answer = b"".join(apps[route](environ.get_environ(), lambda code, headers, exc_info=None: status.update(code=code)))
        assert status["code"].startswith("200"), answer[:500]
        return json.loads(answer)

    experiment = post("/experiment", {"experimentName": ""})
    groups = post("/session_groups", {"experimentName": "", "startIndex": 0, "sliceSize": 100, "colParams": [],
                                      "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE"]})
    return experiment, {g["name"]: g for g in groups["sessionGroups"]}


@pytest.mark.slow
def test_tensorboard_hparams_tab_shows_the_searched_ranges_and_each_batched_trial_with_its_number_and_state(tmp_path,
                                                                                                         data_dir):
    out = tmp_path / "tb"  # a learning rate that diverges: a FAIL trial beside a COMPLETE one, trained together
    batched = [o for o in TINY if not o.startswith("hydra.sweeper.batch_trials=")] + ["hydra.sweeper.batch_trials=2"]
    sweep(out, *batched, "trainer.tensorboard=true", "hydra/sweeper/sampler=grid", "optimizer.lr=choice(0.001,1e9)",
          "model.units=int(interval(8,32))", "hydra.sweeper.n_trials=2", expect=0)
    trials = table(out).set_index("number")
    assert sorted(trials["state"]) == ["COMPLETE", "FAIL"], trials
    for run_dir in trials["run_dir"]:  # trained batched, TensorBoard on: the program is in each trial's metrics
        assert yaml.safe_load(Path(run_dir, "metrics.json").read_text())["program"]
    for number, row in trials.iterrows():  # the scalars Keras's callback gives a lone run, from the batched program
        history, logs = pd.read_csv(f"{row['run_dir']}/history.csv"), Path(row["run_dir"]) / "tensorboard"
        for folder, column in (("train", "accuracy"), ("validation", "val_accuracy"), ("validation", "val_loss")):
            tag = "epoch_" + column.removeprefix("val_")
            assert scalars(logs / folder, tag) == {e - 1: pytest.approx(v, abs=1e-6, nan_ok=True)
                                                   for e, v in zip(history["epoch"], history[column])}, (number, folder)
    experiment, groups = hparams_tab(out)
    infos = {i["name"]: i for i in experiment["hparamInfos"]}
    assert set(infos) == {"optimizer.lr", "model.units", "trial", "state"}
    assert infos["model.units"]["domainInterval"] == {"minValue": 8.0, "maxValue": 32.0}
    assert infos["optimizer.lr"]["domainDiscrete"] == [0.001, 1e9]
    assert infos["state"]["domainDiscrete"] == ["COMPLETE", "PRUNED", "FAIL"]
    assert {m["name"]["tag"] for m in experiment["metricInfos"]} >= {"val_accuracy", "val_loss", "epochs"}
    assert sorted(groups) == ["0", "1", "best"]  # the trials, and the best one's replay on the test set
    assert groups["best"]["hparams"]["model.units"] == trials.loc[trials["state"] == "COMPLETE", "model.units"].item()
    for number, row in trials.iterrows():
        group = groups[str(number)]
        assert group["hparams"]["trial"] == number and group["hparams"]["state"] == row["state"]
        assert group["hparams"]["model.units"] == row["model.units"]
        assert [s["name"] for s in group["sessions"]] == [f"trials/{number}/tensorboard"]
        if row["state"] == "COMPLETE":
            (val,) = [m["value"] for m in group["metricValues"] if m["name"]["tag"] == "val_accuracy"]
            assert val == pytest.approx(row["val_accuracy"], abs=1e-6)
    replay = yaml.safe_load((out / "best.yaml").read_text())["command"]  # the batched winner alone, as printed
    assert "trainer.program=" in replay
    run_cli("train", *replay.split()[3:], "trainer.verbose=0", f"hydra.run.dir={tmp_path / 'replay'}")
    logs = tmp_path / "replay" / "tensorboard"
    assert hparams(logs)["model.units"] == trials.loc[trials["state"] == "COMPLETE", "model.units"].item()
    assert scalars(logs, "val_accuracy") == {1: pytest.approx(trials["val_accuracy"].max(), abs=1e-6)}


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (`run-<id>.wandb`): W&B's protobufs in its LevelDB-style log (32 KiB blocks,
    a 7-byte header per chunk: checksum, length, type), read as wandb-core writes it."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, chunks, found = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        if kind == 0:
            break
        chunks, pos = chunks + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or a record's last chunk
            found.append(wandb_internal_pb2.Record.FromString(chunks))
            chunks = b""
    return found


@pytest.mark.slow
def test_each_sweep_trial_is_a_wandb_run_grouped_by_study_read_back_from_its_offline_files(tmp_path, data_dir):
    out = tmp_path / "wb"
    sweep(out, *TINY, "model.units=int(interval(8,32))", "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=wb",
          "hydra.sweeper.wandb.project=keras-sweep", "hydra.sweeper.wandb.mode=offline")
    trials = table(out).set_index("number")
    files = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2, list((out / "wandb").rglob("*"))
    runs = {}
    for path in files:
        records = wandb_records(path)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        history = [{i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records
                   if r.WhichOneof("record_type") == "history"]
        (end,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
        runs[run.display_name] = (run, history, end)
        assert b"hydra.sweeper.wandb.project" not in path.read_bytes()  # no command line (a storage password)
    assert sorted(runs) == ["trial 0", "trial 1"]
    for number, row in trials.iterrows():
        run, history, end = runs[f"trial {number}"]
        config = {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in run.config.update}
        assert run.project == "keras-sweep" and run.run_group == "wb" and list(run.tags) == [row["state"]] == ["COMPLETE"]
        assert config["model"]["units"] == row["model.units"] and config["trainer"]["epochs"] == 2
        assert config["optuna"] == {"study": "wb", "trial": number, "state": "COMPLETE",
                                    "params": {"model.units": row["model.units"]}}
        assert config["data"]["path"] == str(data_dir)  # resolved, as the trial ran
        epochs = pd.read_csv(f"{row['run_dir']}/history.csv")
        assert [h["_step"] for h in history] == list(epochs["epoch"])
        assert [h["val_accuracy"] for h in history] == pytest.approx(list(epochs["val_accuracy"]), abs=1e-9)
        assert end.exit_code == 0


@pytest.mark.slow
def test_each_sweep_trial_is_an_mlflow_run_and_has_its_tensorboard_logs(tmp_path, data_dir):
    out, uri = tmp_path / "tracked", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [*TINY, "trainer.epochs=2", "model.units=int(interval(8,32))", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_workers=2",
            f"hydra.sweeper.mlflow.tracking_uri={uri}", "trainer.tensorboard=true",
            "hydra.sweeper.mlflow.registered_model=keras-sweep-winner"]
    sweep(out, *args)
    trials = table(out).set_index("number")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("default")  # the study's name
    every = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in every if r.data.tags.get("optuna.role") == "sweep"]
    runs = {int(r.data.tags["optuna.trial"]): r for r in every if "optuna.trial" in r.data.tags}
    assert sorted(runs) == sorted(trials.index) == [0, 1]
    for number, run in runs.items():
        row = trials.loc[number]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params == {"model.units": str(row["model.units"])}
        assert run.data.metrics["val_accuracy"] == pytest.approx(row["val_accuracy"], abs=1e-9)
        assert run.data.metrics["param_count"] == row["param_count"] and run.data.metrics["seconds"] == row["seconds"]
        assert run.data.tags["optuna.state"] == row["state"] == "COMPLETE" and run.info.status == "FINISHED"
        assert run.data.tags["optuna.study"] == "default" and run.data.tags["optuna.run_dir"] == row["run_dir"]
        assert hparams(f"{row['run_dir']}/tensorboard")["model.units"] == row["model.units"]
        history = pd.read_csv(f"{row['run_dir']}/history.csv")
        for column in ("val_accuracy", "loss"):  # each epoch, at its step
            logged = sorted(client.get_metric_history(run.info.run_id, column), key=lambda m: m.step)
            assert [m.step for m in logged] == list(history["epoch"])
            assert [m.value for m in logged] == pytest.approx(list(history[column]), abs=1e-9)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"history.csv", "metrics.json", ".hydra", "tensorboard"} <= artifacts
    best = yaml.safe_load((out / "best.yaml").read_text())
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["optuna.study"] == "default"
    assert parent.data.params["space.model.units"] == "int in [8, 32]" and parent.data.params["n_trials"] == "2"
    assert parent.data.params["fixed.trainer.epochs"] == "2" and parent.data.params["sampler"] == "tpe"
    assert parent.data.tags["optuna.best_trial"] == str(best["trial"])
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(trials["val_accuracy"].max(), abs=1e-9)
    assert parent.data.metrics["test_accuracy"] == pytest.approx(best["test"]["test_accuracy"], abs=1e-9)
    assert {"trials.csv", "best.yaml", "study.yaml"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert (tmp_path / "mlartifacts").is_dir()  # a database store's artifacts beside the sweep, not in the cwd
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "model")] == ["model/model.keras"]  # the winner's
    sweep(out, *args)  # the finished sweep again: nothing registered twice
    (version,) = client.search_model_versions("name='keras-sweep-winner'")
    assert version.run_id == parent.info.run_id and version.tags["optuna.trial"] == str(best["trial"])
    assert version.source == f"{parent.info.artifact_uri}/model"


def test_the_tracking_uri_password_is_never_shown_or_written(tmp_path, data_dir, postgres):
    out, uri = tmp_path / "secret", postgres.new_database()
    result = sweep(out, *TINY, "trainer.epochs=1", "model.units=int(interval(8,32))", "hydra.sweeper.n_trials=1",
                   f"hydra.sweeper.mlflow.tracking_uri={uri}", "hydra.sweeper.mlflow.experiment=secret",
                   "hydra.sweeper.batch_trials=8")  # the batched path writes the trial's .hydra/ itself
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("secret").experiment_id])
    (run,) = [r for r in runs if "optuna.trial" in r.data.tags]
    assert run.data.tags["optuna.state"] == "COMPLETE"
    assert postgres.password not in result.stdout + result.stderr
    written = [path for path in tmp_path.rglob("*")  # the sweep and its MLflow artifacts
               if path.is_file() and postgres.password.encode() in path.read_bytes()]
    assert not written and (out / "trials" / "0" / ".hydra" / "hydra.yaml").is_file()
    bad = uri.replace(f":{postgres.password}@", ":wrong-pw@")
    result = sweep(tmp_path / "refused", *TINY, "model.units=int(interval(8,32))", f"hydra.sweeper.mlflow.tracking_uri={bad}",
                   expect=2)
    (line,) = error_lines(result)
    assert line.startswith("error: hydra.sweeper.mlflow.tracking_uri=postgresql+psycopg2://sweeper:***@") and "wrong-pw" not in line
    assert "password authentication failed" in line, line  # the cause, not SQLAlchemy's "(Background on ...)" footer
    result = sweep(tmp_path / "unreachable", *TINY, "hydra.sweeper.mlflow.tracking_uri=postgresql+psycopg2://u:pw@127.0.0.1:1/db",
                   expect=2)
    (line,) = error_lines(result)
    assert line.endswith('connection to server at "127.0.0.1", port 1 failed: Connection refused'), line


def test_mlflow_settings_and_both_passwords_masked():
    assert SweeperSettings().mlflow.tracking_uri is None  # off by default
    settings = SweeperSettings(mlflow={"tracking_uri": "postgresql+psycopg2://me:track%40pw@db/runs"})
    assert isinstance(settings.mlflow, MlflowSettings) and settings.mlflow.experiment is None
    mask = masking("postgresql+psycopg2://me:store-pw@db/sweeps", settings.mlflow.tracking_uri)
    assert mask("postgresql+psycopg2://me:track%40pw@db/runs track@pw, postgresql+psycopg2://me:store-pw@db/sweeps") == \
        "postgresql+psycopg2://me:***@db/runs ***, postgresql+psycopg2://me:***@db/sweeps"


def test_a_wandb_mode_w_and_b_does_not_have_is_refused_in_one_line(tmp_path):
    from src.errors import UserError
    from src.sweep.settings import WandbSettings
    from src.sweep.wandb_tracking import WandbLogger

    with pytest.raises(UserError, match=r"^hydra.sweeper.wandb.mode='ofline': allowed: online, offline, disabled"):
        WandbLogger(WandbSettings(project="p", mode="ofline"), tmp_path)
    assert WandbLogger(WandbSettings(project="p", mode="offline"), tmp_path).dir == tmp_path  # the sweep folder
