"""The top k confirmed over further seeds: the runs, the winner by mean, the test for the winner only,
confirm.csv, two workers sharing the runs, and a resume after Ctrl-C that redoes no finished run."""
from __future__ import annotations

import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time

import optuna
import pandas as pd
import yaml

from conftest import ROOT, run_cli

# Four short trials, no pruning, then the top 2 retrained with 2 more seeds each.
TINY = ["hydra.sweeper.params=null", "data.n_train=600", "trainer.epochs=2", "model.units=int(interval(8,64))",
        "optimizer.lr=tag(log,interval(1e-3,1e-2))", "hydra.sweeper.n_trials=4", "hydra.sweeper.pruner=none",
        "hydra.sweeper.confirm.top_k=2", "hydra.sweeper.confirm.seeds=2", "hydra.sweeper.batch_trials=1"]
COLUMNS = ["run", "config", "seed", "state", "val_accuracy", "run_dir", "test_accuracy", "test_loss", "error"]


def test_top_k_confirmed_winner_by_mean_tested_alone(tmp_path, data_dir):
    out = tmp_path / "confirm"
    result = run_cli("sweep", "-m", f"hydra.sweep.dir={out}", *TINY, "hydra.sweeper.n_workers=2")
    trials, rows = pd.read_csv(out / "trials.csv"), pd.read_csv(out / "confirm.csv")
    assert list(rows.columns) == COLUMNS and (rows["state"] == "COMPLETE").all()
    top2 = trials.sort_values(["value", "number"], ascending=[False, True])["number"].head(2).tolist()
    search, confirm, test = (rows[rows["run"] == kind] for kind in ("search", "confirm", "test"))
    assert sorted(search["config"]) == sorted(top2) and (search["seed"] == 0).all()
    assert sorted(zip(confirm["config"], confirm["seed"])) == sorted((c, s) for c in top2 for s in (1, 2))
    assert confirm["test_accuracy"].isna().all() and search["test_accuracy"].isna().all()  # no test before choosing

    means = rows[rows["run"] != "test"].groupby("config")["val_accuracy"].mean()
    winner = max(means.index, key=lambda c: (round(means[c], 6), -c))
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["trial"] == best["confirmed"]["winner"] == winner
    assert list(best["confirmed"]["configs"])[0] == winner  # best mean first, as the summary lists them
    assert best["confirmed"]["configs"][winner]["mean"] == statistics.fmean(
        rows[(rows["run"] != "test") & (rows["config"] == winner)]["val_accuracy"])
    assert sorted(test["seed"]) == [0, 1, 2] and (test["config"] == winner).all()  # the winner only, once per seed
    assert test["test_accuracy"].between(0.5, 1).all()
    assert best["test"]["test_accuracy"] == statistics.fmean(test["test_accuracy"]) and best["test"]["seeds"] == 3
    # the winner is not trained again: its saved models (search run, confirmation runs) are scored on the test set
    trained = {0: search[search["config"] == winner]["run_dir"].item(),
               **{s: confirm[(confirm["config"] == winner) & (confirm["seed"] == s)]["run_dir"].item() for s in (1, 2)}}
    for seed, run_dir in zip(test["seed"], test["run_dir"]):
        metrics = json.loads(open(f"{run_dir}/metrics.json").read())
        assert metrics["trained_in"] == trained[seed] and metrics["test_accuracy"] == test[test["seed"] == seed][
            "test_accuracy"].item()
    assert (out / "best" / "model.keras").is_file()
    # ... and scoring the search run's saved model gives what training it again with the replay command gives
    run_cli("train", *shlex.split(best["command"])[3:], "trainer.test=true", f"hydra.run.dir={tmp_path / 'replay'}")
    again = json.loads((tmp_path / "replay" / "metrics.json").read_text())
    assert abs(again["test_accuracy"] - test[test["seed"] == 0]["test_accuracy"].item()) < 1e-6
    assert "confirmed over 3 seeds, winner by mean val_accuracy" in result.stdout
    assert f"test accuracy {best['test']['test_accuracy']:.4f} +- " in result.stdout

    for run_dir in confirm["run_dir"]:  # a further seed for the model; the data split of the search
        config = yaml.safe_load(open(f"{run_dir}/.hydra/config.yaml"))
        assert config["trainer"]["seed"] in (1, 2) and config["data"]["seed"] == 0
    storage = f"sqlite:///{out / 'study.db'}"
    analysis = run_cli("analyze", str(out)).stdout  # seed noise in view: means over seeds, gaps flagged
    assert "confirmed over seeds (seed noise of one run: std " in analysis and "within_noise" in analysis
    shown = analysis.split("confirmed over seeds")[1].splitlines()[2].split()
    assert shown[:3] == ["1", str(winner), "3"]  # rank 1 by mean: the winner, over 3 runs
    report = run_cli("analyze", str(out), "--report")
    assert "Confirmed over seeds" in (out / "report.md").read_text() and report.returncode == 0

    name = next(n for n in optuna.get_all_study_names(storage) if n.endswith(":confirm"))
    queue = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert len({t.user_attrs["worker"] for t in queue}) == 2  # both workers took confirmation runs


def test_two_batched_workers_claim_one_trials_seeds_at_a_time_longest_trial_first(tmp_path, data_dir):
    """A trial's confirmation runs train as one group, another trial's would train after them: so each claim of
    a command with several workers is one trial's seeds long (not the even share, 3 of these 6), and the queue puts
    each trial's seeds side by side, the longest searched trial first (the last claim is the shortest), as
    longest-processing-time scheduling does. A claim takes its trial's runs by config, not the queue's next ones:
    two workers asking at the same moment would otherwise take them in turn, each a run of two trials."""
    out = tmp_path / "claims"
    run_cli("sweep", "-m", f"hydra.sweep.dir={out}", *TINY[:-1], "model.layers=range(1,4)", "hydra.sweeper.n_trials=6",
            "hydra.sweeper.confirm.top_k=3", "hydra.sweeper.n_workers=2")
    storage = f"sqlite:///{out / 'study.db'}"
    search = {t.number: t for t in optuna.load_study(study_name="default", storage=storage).get_trials()}
    queue = optuna.load_study(study_name="default:confirm", storage=storage).get_trials()
    configs = [t.params["config"] for t in queue]
    assert len(queue) == 6 and configs[0::2] == configs[1::2] and len(set(configs)) == 3  # each trial's seeds side by side
    seconds = [search[c].user_attrs["seconds"] for c in configs]
    assert seconds == sorted(seconds, reverse=True)
    claims: list[list] = []  # the runs one worker asked in one go: all asked before the first one ends
    for t in sorted(queue, key=lambda t: (t.user_attrs["worker"], t.datetime_start)):
        last = claims[-1][0] if claims else None
        if last and last.user_attrs["worker"] == t.user_attrs["worker"] and t.datetime_start < last.datetime_complete:
            claims[-1].append(t)
        else:
            claims.append([t])
    held = [[t.params["config"] for t in c] for c in claims]
    assert sum(map(len, claims)) == 6 and max(map(len, claims)) == 2 and all(len(set(c)) == 1 for c in held), held
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in queue)


def test_resume_after_ctrl_c_keeps_finished_confirmation_runs(tmp_path, data_dir):
    out = tmp_path / "resume"
    args = [sys.executable, "-m", "src.sweep", "-m", f"hydra.sweep.dir={out}", *TINY, "data.n_train=null"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "confirm.csv").is_file() and (pd.read_csv(out / "confirm.csv")["run"] == "confirm").any():
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    before = pd.read_csv(out / "confirm.csv")
    before = before[(before["run"] == "confirm") & (before["state"] == "COMPLETE")]
    assert 1 <= len(before) <= 4  # Ctrl-C lands after the first run; on a busy machine maybe after the last

    run_cli("sweep", "-m", f"hydra.sweep.dir={out}", *TINY, "data.n_train=null")
    after = pd.read_csv(out / "confirm.csv")
    confirm = after[after["run"] == "confirm"]
    assert len(confirm) == 4 and not confirm.duplicated(["config", "seed"]).any()  # each run once
    kept = confirm.merge(before, on=["config", "seed"], suffixes=("", "_before"))
    assert len(kept) == len(before) and (kept["run_dir"] == kept["run_dir_before"]).all()  # not run again
    assert (after["run"] == "test").sum() == 3
