"""`python -m src.sweep -m` end to end on the real data: tables, resume, failures, pruning, seeds, Ctrl-C."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from conftest import ROOT, error_lines, run_cli

# A tiny search: few images, few epochs, nothing from a sweep definition but what the test passes.
# One trial at a time (the engine's rules per trial); batched trials: the quick sweep and test_batch_sweep.py.
TINY = ["hydra.sweeper.params=null", "hydra.sweeper.confirm.top_k=0", "data.n_train=600", "trainer.epochs=2",
        "hydra.sweeper.batch_trials=1"]


def sweep(folder, *overrides, expect=0):
    return run_cli("sweep", "-m", f"hydra.sweep.dir={folder}", *overrides, expect=expect)


def table(folder, name="trials"):
    return pd.read_csv(folder / f"{name}.csv")


def test_quick_sweep_writes_every_table(tmp_path, quick_sweep):
    out, result = quick_sweep
    progress = [line for line in result.stdout.splitlines() if line.startswith("trial ")]
    assert len(progress) == 6 and all("/6 done" in line and "best=" in line and "left" in line for line in progress)
    assert [line.split()[1] for line in progress] == [str(n) for n in range(6)]
    assert "Epoch 1/" not in result.stdout and "\r" not in result.stdout  # no bars nor live lines in a file
    assert "oneDNN" not in result.stderr  # TensorFlow's start-up banner is silenced

    trials = table(out)
    assert trials["number"].tolist() == list(range(6))
    assert set(trials["state"]) <= {"COMPLETE", "PRUNED"} and (trials["state"] == "COMPLETE").sum() >= 2
    for column in ("value", "model.units", "model.layers", "model.activation", "optimizer.lr", "val_accuracy",
                   "val_loss", "train_accuracy", "train_loss", "epochs", "param_count", "seconds",
                   "datetime_start", "datetime_complete", "run_dir", "error"):
        assert column in trials, column
    assert trials["model.layers"].isin([1, 2]).all() and trials["model.units"].between(8, 64).all()
    assert all((out / "trials" / str(n) / "history.csv").is_file() for n in trials["number"])

    board = table(out, "leaderboard")
    done = trials[trials["state"] == "COMPLETE"].sort_values("value", ascending=False)
    assert board["rank"].tolist() == list(range(1, len(done) + 1))
    assert board["value"].tolist() == done["value"].tolist()

    summary = table(out, "params_summary")
    assert set(summary["param"]) == {"model.units", "model.layers", "model.activation", "optimizer.lr"}
    assert summary.groupby("param")["count"].sum().eq(len(done)).all()
    assert (summary["mean"] == summary["mean"].round(6)).all()  # as the scores it averages
    importance = table(out, "importance")
    assert set(importance["param"]) == set(summary["param"]) and importance["importance"].sum() == pytest.approx(1)

    best = yaml.safe_load((out / "best.yaml").read_text())
    winner = best["confirmed"]["winner"]  # sweeps/quick.yaml confirms its top 2: the best mean over seeds wins
    assert best["trial"] == winner in board["number"].head(2).tolist()
    assert best["val_accuracy"] == trials.set_index("number").loc[winner, "value"]
    assert best["config"]["model"]["units"] == best["params"]["model.units"]
    assert 0.5 < best["test"]["test_accuracy"] <= 1 and best["test"]["trial"] == best["trial"]
    assert (out / "best" / "model.keras").is_file()  # the replay saves the winner
    assert "sweep=" not in best["command"]
    assert f"command: {best['command']}\n" in (out / "best.yaml").read_text()  # one line, to copy and paste
    info = yaml.safe_load((out / "study.yaml").read_text())
    assert info["n_trials"] == 6 and info["search_space"]["model.units"] == "int in [8, 64], log"

    # The replay command in best.yaml reproduces the best trial's validation accuracy exactly in a fresh process:
    # the sweep trained it batched, and the command names that program (trainer.program).
    replay = shlex.split(best["command"])[3:]
    run_cli("train", *replay, f"hydra.run.dir={tmp_path / 'replay'}", "trainer.verbose=0")
    assert json.loads((tmp_path / "replay" / "metrics.json").read_text())["val_accuracy"] == best["val_accuracy"]


def test_resume_finishes_the_study(tmp_path, data_dir):
    out = tmp_path / "resume"
    args = [*TINY, "model.units=int(interval(8,32))"]
    sweep(out, *args, "hydra.sweeper.n_trials=2")
    assert len(table(out)) == 2
    result = sweep(out, *args, "hydra.sweeper.n_trials=4")
    assert table(out)["number"].tolist() == [0, 1, 2, 3]
    assert sum(line.startswith("trial ") for line in result.stdout.splitlines()) == 2
    result = sweep(out, *args, "hydra.sweeper.n_trials=4")  # complete: only rewrites the tables
    assert len(table(out)) == 4 and not any(line.startswith("trial ") for line in result.stdout.splitlines())


def test_same_seed_same_params(tmp_path, data_dir):
    args = [*TINY, "trainer.epochs=1", "model.units=int(interval(8,64))", "optimizer.lr=tag(log,interval(1e-4,1e-1))",
            "model.activation=relu,tanh,elu", "hydra.sweeper.n_trials=3"]
    params = ["model.units", "optimizer.lr", "model.activation"]
    a, b, c = (tmp_path / n for n in "abc")
    sweep(a, *args)
    sweep(b, *args)
    sweep(c, *args, "hydra.sweeper.seed=7")
    assert table(a)[params].equals(table(b)[params])
    assert not table(a)[params].equals(table(c)[params])


def test_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, data_dir):
    out = tmp_path / "fail"
    sweep(out, *TINY, "model.activation=relu,nope", "hydra.sweeper.sampler=grid")
    trials = table(out).set_index("model.activation")
    assert trials.loc["nope", "state"] == "FAIL" and "'nope' is not a Keras activation" in trials.loc["nope", "error"]
    assert trials.loc["relu", "state"] == "COMPLETE"
    assert yaml.safe_load((out / "best.yaml").read_text())["params"]["model.activation"] == "relu"


def test_max_failures_stops_with_a_clear_message(tmp_path, data_dir):
    out = tmp_path / "failing"
    result = sweep(out, *TINY, "model.activation=nope", "model.units=int(interval(8,32))",
                   "hydra.sweeper.max_failures=2", expect=2)
    assert "stopped after 2 failed trials (hydra.sweeper.max_failures=2)" in error_lines(result)[0]
    assert table(out)["state"].tolist() == ["FAIL", "FAIL"]


def test_a_sweep_whose_every_trial_failed_exits_2_with_the_first_failure(tmp_path, data_dir):
    """Below max_failures too: the exit status does not depend on n_trials."""
    out = tmp_path / "all-failed"
    result = sweep(out, *TINY, "model.activation=nope", "hydra.sweeper.n_trials=2", expect=2)
    assert error_lines(result) == [f"error: no trial completed: 2 failed; the first (trial 0): {table(out)['error'][0]}"]
    assert "'nope' is not a Keras activation" in error_lines(result)[0] and "Traceback" not in result.stderr
    assert not (out / "best.yaml").exists() and "best.yaml" not in result.stdout


def test_threshold_pruner_prunes_early(tmp_path, data_dir):
    out = tmp_path / "prune"
    sweep(out, *TINY, "trainer.epochs=4", "model.units=int(interval(8,32))", "hydra.sweeper.n_trials=2",
          "hydra.sweeper.pruner=threshold", "hydra.sweeper.pruners.threshold.lower=0.999")
    trials = table(out)
    assert trials["state"].tolist() == ["PRUNED", "PRUNED"]
    assert trials["epochs"].tolist() == [1, 1]  # stopped at once, not after 4 epochs
    assert (trials["value"] == trials["val_accuracy"]).all()  # its last report, rounded as the tables are
    assert len(pd.read_csv(trials["run_dir"][0] + "/history.csv")) == 1
    assert not (out / "best.yaml").exists()


def test_multi_objective_marks_the_pareto_front(tmp_path, data_dir):
    out = tmp_path / "pareto"
    result = sweep(out, *TINY, "trainer.epochs=1", "model.units=int(interval(4,64))", "hydra.sweeper.n_trials=4",
                   "hydra.sweeper.objectives=[val_accuracy,param_count]", "hydra.sweeper.directions=[maximize,minimize]",
                   "hydra.sweeper.confirm.top_k=4", "hydra.sweeper.confirm.seeds=1", "hydra.sweeper.pruner=median")
    assert "note: pruning is off: Optuna cannot prune multi-objective studies" in result.stdout
    assert ", pruner none, " in result.stdout  # the header says so too
    trials = table(out)
    assert {"value_val_accuracy", "value_param_count", "pareto"} <= set(trials.columns)
    assert (trials["value_param_count"] == trials["param_count"]).all() and trials["pareto"].any()
    board = table(out, "leaderboard")
    assert set(board["number"]) == set(trials.loc[trials["pareto"], "number"])
    # confirmation retrains the front only (top_k 4 of 4 trials): a dominated trial never wins
    confirmed = table(out, "confirm")
    assert set(confirmed["config"]) == set(board["number"])
    assert yaml.safe_load((out / "best.yaml").read_text())["trial"] in set(board["number"])


@pytest.mark.parametrize("override, message", [
    ("model.units=interval(64,8)", "model.units=interval(64.0,8.0) is empty"),
    ("model.units=range(8,8)", "is empty: the end is excluded"),
    ("optimizer.lr=tag(log,interval(0,1))", "a log scale needs low > 0"),
    ("model.units=tag(lg,int(interval(8,16)))", "tag 'lg' means nothing here; the one tag read is log, on an interval"),
    ("model.units=tag(log,choice(8,16))", "tag 'log' means nothing here"),
    ("hydra.sweeper.storage=sqlite:///:memory:", "an in-memory study cannot be shared by the sweep's worker processes"),
    ("hydra.sweeper.sampler=annealing", "hydra.sweeper.sampler='annealing'; allowed: tpe, random, grid, cmaes, qmc, nsgaii, gp"),
    ("hydra.sweeper.pruner=early", "hydra.sweeper.pruner='early'; allowed: none, median"),
    ("model.unitz=int(interval(8,16))", "model.unitz: no key 'unitz' in model (did you mean model.units?)"),
])
def test_bad_search_space_fails_before_any_trial(tmp_path, override, message):
    out = tmp_path / "bad"
    result = sweep(out, *TINY, override, expect=2)
    assert len(error_lines(result)) == 1 and message in error_lines(result)[0], result.stderr[-2000:]
    assert not (out / "trials").exists()


@pytest.mark.parametrize("missing", ["folder", "file"])
def test_missing_data_stops_the_sweep_in_one_line_before_its_study(tmp_path, data_dir, missing):
    folder = tmp_path / "data"
    if missing == "file":  # three of the four files
        folder.mkdir()
        for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
            (folder / name).symlink_to(data_dir / name)
    out = tmp_path / "no-data"
    result = run_cli("sweep", "-m", f"hydra.sweep.dir={out}", *TINY, expect=2, env={"FASHION_MNIST_DIR": str(folder)})
    expected = f"data folder not found: {folder}" if missing == "folder" else \
        f"data file missing: {folder / 't10k-labels-idx1-ubyte.gz'}"
    errors = error_lines(result)
    assert len(errors) == 1 and errors[0].startswith(f"error: {expected}"), result.stderr[-2000:]
    assert "no trial completed" not in result.stdout and not out.exists()


@pytest.mark.parametrize("override", ["hydra.sweeper.sampler=tpee", "hydra.sweeper.pruner=early",
                                      "hydra.sweeper.study_name=../../escape"])
def test_a_refused_command_leaves_no_empty_sweep_folder(tmp_path, override):
    out = tmp_path / "refused"
    result = sweep(out, *TINY, override, expect=2)
    assert len(error_lines(result)) == 1, result.stderr[-2000:]
    assert not out.exists(), sorted(out.iterdir())

def epochs_reported(db: Path) -> int:
    """How many epochs the sweep's trials have reported to the pruner so far (read-only, while it runs)."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute("SELECT COUNT(*) FROM trial_intermediate_values").fetchone()[0]
    except sqlite3.Error:  # not created yet, or locked by a writer for a moment
        return 0


def test_ctrl_c_marks_the_running_trial_and_resume_completes(tmp_path, data_dir):
    out = tmp_path / "interrupt"
    args = [sys.executable, "-m", "src.sweep", "-m", f"hydra.sweep.dir={out}", *TINY, "trainer.epochs=30",
            "model.units=int(interval(8,32))", "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner=median"]
    # Ctrl-C as at a terminal, even when pytest runs in the background (where SIGINT is inherited ignored).
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not epochs_reported(out / "study.db") and time.time() < deadline:  # the first trial is training
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    trials = table(out)
    assert trials["state"].tolist() == ["FAIL"] and trials["error"][0] == "interrupted by Ctrl-C"
    assert pd.isna(trials["value"][0])  # no value, though it had reported an epoch (as the study has none)
    sweep(out, *args[5:])
    trials = table(out)
    assert trials["state"].tolist() == ["FAIL", "COMPLETE", "COMPLETE"]  # the interrupted one does not count


def test_ctrl_c_while_the_command_starts_is_one_line_not_a_traceback(tmp_path, data_dir):
    """As the command makes its study (its folder has just appeared) it has not set its own handlers yet. (Earlier,
    in the imports, a library's catch-all `except` may swallow the KeyboardInterrupt: CI met one that did.)"""
    out = tmp_path / "early"
    args = [sys.executable, "-m", "src.sweep", "-m", f"hydra.sweep.dir={out}", *TINY]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not out.exists() and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert "run the same command again to" in stderr.strip().splitlines()[-1]


def test_a_sweep_folder_that_refuses_writes_gives_the_running_trial_back_and_the_rerun_completes(tmp_path, data_dir):
    """The machine failed, not the params: a trial that cannot write its folder is given back (not counted, its
    params queued again), the command stops in one line, and the rerun runs those params. The folder refuses
    writes by `chattr +i`, which binds root too (CI runs as root: `chmod a-w` would not stop it); the study lives
    outside it, as a shared storage would."""
    out, db = tmp_path / "unwritable", tmp_path / "study.db"
    args = [*TINY, "trainer.epochs=100", "model.units=int(interval(8,32))", "hydra.sweeper.n_trials=1",
            f"hydra.sweeper.storage=sqlite:///{db}"]
    proc = subprocess.Popen([sys.executable, "-m", "src.sweep", "-m", f"hydra.sweep.dir={out}", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while epochs_reported(db) < 3 and time.time() < deadline:  # the first trial is training
        time.sleep(0.02)
    try:
        locked = subprocess.run(["chattr", "-R", "+i", str(out)], capture_output=True, text=True)
        if locked.returncode:
            proc.kill()
            pytest.skip(f"this file system or user cannot make a folder immutable: {locked.stderr.strip()}")
        _, stderr = proc.communicate(timeout=300)
    finally:
        subprocess.run(["chattr", "-R", "-i", str(out)], capture_output=True)
    assert proc.returncode == 2, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the machine failed, not the trial (Operation not permitted)" in errors[0] and \
        "rerun the same command to resume" in errors[0], stderr[-2000:]
    study = optuna.load_study(study_name="default", storage=f"sqlite:///{db}")
    cut, retry = study.trials
    assert cut.state == optuna.trial.TrialState.FAIL and cut.user_attrs["interrupted"]  # its slot given back
    assert retry.state == optuna.trial.TrialState.WAITING and retry.params == cut.params
    run_cli("sweep", "-m", f"hydra.sweep.dir={out}", *args)
    done = [t for t in optuna.load_study(study_name="default", storage=f"sqlite:///{db}").trials
            if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 1 and done[0].params == cut.params


def test_a_study_db_deleted_mid_sweep_stops_it_in_one_line_and_is_not_made_again(tmp_path, data_dir):
    out = tmp_path / "deleted"
    args = [sys.executable, "-m", "src.sweep", "-m", f"hydra.sweep.dir={out}", *TINY, "trainer.epochs=30",
            "model.units=int(interval(8,32))", "hydra.sweeper.n_trials=2"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not epochs_reported(out / "study.db") and time.time() < deadline:  # the first trial is training
        time.sleep(0.02)
    (out / "study.db").unlink()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: the study's storage {out / 'study.db'} is gone (deleted or replaced while the sweep "
                      f"ran): restore the file and rerun the same command to resume"], stderr[-2000:]
    assert not (out / "study.db").exists() and not (out / "trials.csv").exists()


def test_parallel_recycled_workers_lose_and_double_nothing(tmp_path, data_dir):
    out = tmp_path / "parallel"
    units = [8, 12, 16, 20, 24, 28, 32]
    args = [*TINY, "trainer.epochs=1", f"model.units=choice({','.join(map(str, units))})", "hydra.sweeper.sampler=grid",
            "hydra.sweeper.n_workers=2", "hydra.sweeper.max_trials_per_worker=2"]
    sweep(out, *args, "hydra.sweeper.n_trials=5")
    trials = table(out)
    assert trials["number"].tolist() == [0, 1, 2, 3, 4] and (trials["state"] == "COMPLETE").all()
    assert trials["run_dir"].map(lambda d: (Path(d) / "metrics.json").is_file()).all()
    assert trials["model.units"].is_unique  # the workers share one grid order: no point twice
    sweep(out, *args, "hydra.sweeper.n_trials=7")
    trials = table(out)
    assert len(trials) == 7 and (trials["state"] == "COMPLETE").all() and sorted(trials["model.units"]) == units
    # A number missing from the table is a trial asked past the budget when both workers asked for the last
    # slot at once: given back before it drew any params, never run.
    with closing(sqlite3.connect(out / "study.db")) as db:
        skipped = db.execute("SELECT t.number, a.value_json FROM trials t JOIN trial_user_attributes a ON "
                             "a.trial_id = t.trial_id AND a.key = 'error' WHERE t.state = 'FAIL'").fetchall()
    assert sorted([*trials["number"], *(n for n, _ in skipped)]) == list(range(7 + len(skipped)))
    assert all("not run: another worker took the study's last trial first" in error for _, error in skipped), skipped
    result = sweep(out, *args, "hydra.sweeper.n_trials=9")  # more than the grid's 7 points: said, nothing new runs
    assert "study 'default' is complete: 7/7 trials; it ran the whole grid; set study_name" in result.stdout
    assert "7 trials (the whole grid; hydra.sweeper.n_trials=9 asks more)" in result.stdout
    assert len(table(out)) == 7
    assert yaml.safe_load((out / "best.yaml").read_text())["test"]["test_accuracy"] > 0.5


@pytest.mark.parametrize("override, message", [
    ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0: use an integer >= 1"),
    ("hydra.sweeper.n_workers=0", "hydra.sweeper.n_workers=0: use an integer >= 1"),
    ("hydra.sweeper.max_trials_per_worker=0", "hydra.sweeper.max_trials_per_worker=0: use an integer >= 1"),
    ("hydra.sweeper.grace_period=5", "hydra.sweeper.grace_period=5: must be longer than heartbeat_interval=10"),
    ("trainer.epochs=0", "trainer.epochs=0: use an integer >= 1"),
    ("trainer.batch_size=0", "trainer.batch_size=0: use an integer >= 1"),
    ("optimizer.lr=0", "optimizer.lr=0.0: the learning rate must be a number > 0"),
    ("trainer.epochs=int(interval(0,3))", "trainer.epochs=0: use an integer >= 1"),
    ("optimizer=choice(adam,nadam)", "optimizer=nadam: no such option; allowed: adam, adamw, rmsprop, sgd (did you mean adam?) "
                                     "(with optimizer=nadam)"),
    ("hydra.sweeper.storage=postgresql+psycopg2://me:hunter2pw@127.0.0.1:1/none",
     "hydra.sweeper.storage=postgresql+psycopg2://me:***@127.0.0.1:1/none"),
    ("hydra.sweeper.objectives=[val_acc]", "hydra.sweeper.objectives: 'val_acc' is not a metric the training returns; "
                                           "allowed: val_accuracy, val_loss, best_val_accuracy"),
    ("hydra.sweeper.custom_search_space=examples.custom_space.nope",
     "hydra.sweeper.custom_search_space='examples.custom_space.nope' cannot be imported: module 'examples.custom_space' "
     "has no attribute 'nope'"),
])
def test_bad_settings_fail_before_any_trial(tmp_path, override, message):
    out = tmp_path / "bad"
    result = sweep(out, *TINY, "model.units=int(interval(8,16))", override, expect=2)
    assert len(error_lines(result)) == 1 and message in error_lines(result)[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "hunter2pw" not in result.stdout + result.stderr
    assert not (out / "trials").exists()


def test_too_many_workers_are_capped_with_a_note(tmp_path, data_dir):
    result = sweep(tmp_path / "capped", *TINY, "trainer.epochs=1", "model.units=int(interval(8,16))",
                   "hydra.sweeper.n_trials=1", "hydra.sweeper.n_workers=64")
    assert "note: hydra.sweeper.n_workers=64 capped at 1 (1 trials left" in result.stdout
    assert table(tmp_path / "capped")["state"].tolist() == ["COMPLETE"]


def test_changed_space_or_fixed_override_empty_storage_and_complete_study_are_said_plainly(tmp_path, data_dir):
    out = tmp_path / "study"
    sweep(out, *TINY, "trainer.epochs=1", "model.units=int(interval(8,32))", "hydra.sweeper.n_trials=1")
    result = sweep(out, *TINY, "trainer.epochs=1", "model.units=int(interval(8,32))", "hydra.sweeper.n_trials=1")
    assert "study 'default' is complete: 1/1 trials; raise n_trials or set study_name" in result.stdout
    result = sweep(out, *TINY, "trainer.epochs=1", "model.units=int(interval(8,64))", expect=2)
    assert error_lines(result) == ["error: study 'default' searched model.units as int in [8, 32]; this run asks "
                                   "int in [8, 64]: set hydra.sweeper.study_name to start a new study"]
    result = sweep(out, *TINY, "trainer.epochs=3", "model.units=int(interval(8,32))", expect=2)  # trained otherwise
    assert error_lines(result)[0].startswith("error: study 'default' ran with trainer.epochs=1; this run has "
                                             "trainer.epochs=3: rerun with the study's fixed overrides (")
    (out / "study.db").write_bytes(b"")  # the storage lost: never a new study over the old tables
    result = sweep(out, *TINY, "trainer.epochs=1", "model.units=int(interval(8,32))", expect=2)
    assert "is empty (0 bytes), not an Optuna study" in error_lines(result)[0]
    assert len(table(out)) == 1 and (out / "study.db").stat().st_size == 0


def test_without_m_a_hint_and_exit_2():
    result = run_cli("sweep", "sweep=quick", expect=2)
    assert error_lines(result) == ["error: python -m src.sweep searches only with -m: python -m src.sweep -m "
                                   "[sweep=NAME] [overrides] (to train one network: python -m src.train [overrides])"]


def test_m_with_cfg_shows_the_config_as_without_it():
    result = run_cli("sweep", "-m", "--cfg", "job", "-p", "model.units", "model.units=32")
    assert result.stdout.strip() == "32" and "Traceback" not in result.stderr


def test_help_texts_are_the_projects_own():
    sweep_help = run_cli("sweep", "--help").stdout
    assert sweep_help.startswith("python -m src.sweep -m [sweep=NAME]") and "sweep: default, fashion10, quick" in sweep_help
    assert "range(a,b[,step]) (b excluded)" in sweep_help and "n_trials (study total)" in sweep_help
    assert "n_train: 50" not in sweep_help and "outputs/sweeps/<study_name>/" in sweep_help
    train_help = run_cli("train", "--help").stdout
    assert train_help.startswith("python -m src.train [key=value ...]") and "optimizer: adam, adamw, rmsprop, sgd" in train_help


def test_a_terminal_sees_each_epoch_on_one_rewritten_line(tmp_path, data_dir):
    """On a terminal a live line (epoch k/n, score, seconds) is rewritten in place; in a file, one line per trial."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "src.sweep", "-m", f"hydra.sweep.dir={tmp_path / 'live'}", *TINY,
                             "trainer.epochs=3", "model.units=int(interval(8,16))", "hydra.sweeper.n_trials=1"],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the terminal closed: the sweep ended
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    text = out.decode()
    assert "\r\x1b[Ktrial 0: epoch 1/3 val_accuracy=" in text and "\r\x1b[Ktrial 0: epoch 3/3" in text
    assert "\r\x1b[Ktrial 0 COMPLETE" in text and "1/1 done" in text


def test_a_command_refused_over_another_studys_tables_leaves_no_study_in_a_shared_storage(tmp_path, data_dir):
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    args = [*TINY, "trainer.epochs=1", "model.units=int(interval(8,32))", "hydra.sweeper.n_trials=1",
            f"hydra.sweeper.storage={shared}"]
    sweep(tmp_path / "a", *args, "hydra.sweeper.study_name=a")
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "trials.csv", tmp_path / "b" / "trials.csv")  # tables of a study that is not there
    result = sweep(tmp_path / "b", *args, "hydra.sweeper.study_name=b", expect=2)
    assert error_lines(result) == [f"error: {tmp_path / 'b' / 'trials.csv'} lists 1 trials but study 'b' has none in "
                                   f"its storage (emptied or replaced?); restore the storage, or use another "
                                   f"hydra.sweep.dir or study_name"]
    assert optuna.get_all_study_names(shared) == ["a"]  # before: an empty study 'b' was left in the shared file
