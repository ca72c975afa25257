"""`python -m src.analyze` on a real quick sweep's folder and on hand-written CSVs (malformed ones too)."""
from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys

import matplotlib.image as mpimg
import pandas as pd
import pytest
import yaml

from conftest import ROOT, error_lines
from src.analyze import load_trials
from src.analyze.cli import main

PLOTS = ("history", "parameters", "importance", "size", "curves")


def analyze(*args: str, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "src.analyze", *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == expect, result.stderr[-3000:]
    return result


def test_load_trials_is_one_tidy_frame(quick_sweep, tmp_path):
    folder, _ = quick_sweep
    copy = shutil.copytree(folder, tmp_path / "copy")
    trials = load_trials([folder, copy / "trials.csv"])
    assert len(trials) == 12 and trials.columns[0] == "sweep"
    assert trials["sweep"].tolist() == ["quick"] * 6 + ["copy"] * 6


def test_terminal_answers(quick_sweep):
    folder, _ = quick_sweep
    out = analyze(folder, "--top", 3).stdout
    trials = pd.read_csv(folder / "trials.csv")
    best = trials[trials["state"] == "COMPLETE"].sort_values("value", ascending=False).iloc[0]
    assert "quick: top 3 trials" in out and "quick: trials by state" in out
    assert "val_accuracy by parameter" in out and "test_accuracy" in out
    board = out.split("quick: top 3 trials\n")[1].split("\n\n")[0].splitlines()
    assert len(board) == 1 + min(3, (trials["state"] == "COMPLETE").sum())
    assert board[1].split()[1] == str(best["number"])
    for state in trials["state"].value_counts().index:
        assert state in out
    by = analyze(folder, "--by", "model.activation").stdout
    assert "by model.activation" in by and "relu" in by


def test_markdown_and_csv_formats(quick_sweep):
    folder, _ = quick_sweep
    md = analyze(folder, "--format", "markdown").stdout
    assert "## quick: top 5 trials" in md and "|---|" in md
    csv = analyze(folder, "--format", "csv").stdout
    board = pd.read_csv(io.StringIO(csv.split("# quick: top 5 trials\n")[1].split("# ")[0]))
    assert {"number", "value", "model.units"} <= set(board.columns)


def test_several_sweeps_side_by_side(quick_sweep, tmp_path):
    folder, _ = quick_sweep
    other = shutil.copytree(folder, tmp_path / "other")
    out = analyze(folder, other).stdout
    assert "Best of each sweep" in out
    table = out.split("Best of each sweep\n")[1].split("\n\n")[0].splitlines()
    assert table[1].split()[0] == "quick" and table[2].split()[0] == "other"
    header, row = table[0].split(), table[1].split()
    tested = yaml.safe_load((folder / "best.yaml").read_text())["test"]["trial"]
    winner = pd.read_csv(folder / "trials.csv").set_index("number").loc[tested]
    assert row[header.index("winner")] == str(tested)  # the sweep's answer, with its own params
    assert row[header.index("model.units")] == str(winner["model.units"])
    best = pd.read_csv(folder / "trials.csv").sort_values("value", ascending=False, kind="stable").iloc[0]
    assert row[header.index("best_single")] == str(best["number"])


def test_a_folder_of_only_the_csv_files(quick_sweep, tmp_path):
    """CSV files copied off a machine (no study.yaml, best.yaml or study.db) still give the seed noise."""
    folder, _ = quick_sweep
    copy = tmp_path / "copied"
    copy.mkdir()
    for csv in folder.glob("*.csv"):
        shutil.copy(csv, copy)
    out = analyze(copy).stdout
    confirmed = pd.read_csv(folder / "confirm.csv")
    winner = confirmed[confirmed["run"] == "test"]["config"].iloc[0]
    table = out.split("confirmed over seeds")[1].split("\n\n")[0].splitlines()
    assert table[2].split()[:2] == ["1", str(winner)], out
    assert "val_accuracy by parameter" in out

def test_report_plots_and_html(quick_sweep, tmp_path):
    folder = shutil.copytree(quick_sweep[0], tmp_path / "report")
    analyze(folder, "--report")
    html = (folder / "report.html").read_text()
    md = (folder / "report.md").read_text()
    for name in PLOTS:
        png = folder / f"{name}.png"
        height, width = mpimg.imread(png).shape[:2]
        assert width >= 500 and height >= 250, (name, width, height)
        assert base64.b64encode(png.read_bytes()).decode() in html  # embedded, not linked
        assert f"]({name}.png)" in md
    assert html.count("data:image/png;base64,") == len(PLOTS)
    for heading in ("The question", "The answer", "The evidence", "Failures"):
        assert heading in html and heading in md
    assert "python -m src.train" in html and "test accuracy" in md
    test = yaml.safe_load((folder / "best.yaml").read_text())["test"]  # the confirmed winner's, over its seeds
    assert f"the mean of {test['seeds']} runs with different seeds" in md and "measured once" not in md


def write_csv(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trials.csv").write_text(text)
    return folder


def test_hand_written_csv_without_study_files(tmp_path):
    folder = write_csv(tmp_path / "hand", "number,state,value,model.units,model.activation,param_count,error\n"
                       "0,COMPLETE,0.9,16,relu,12000,\n1,COMPLETE,0.95,64,tanh,50000,\n"
                       "2,FAIL,,32,nope,,boom\n3,PRUNED,0.7,8,relu,6000,\n")
    assert main([str(folder), "--report"]) == 0
    assert (folder / "history.png").is_file() and (folder / "size.png").is_file()
    assert not (folder / "importance.png").exists() and not (folder / "curves.png").exists()
    assert "boom" in (folder / "report.md").read_text()


def test_log_axes_are_labelled_within_one_decade_and_at_each_choice(tmp_path):
    """size.png's parameter counts within one decade get labels (matplotlib's default labels only powers of ten);
    a choice of batch sizes spanning 4x or more is drawn on a log axis with a tick at each choice."""
    from src.analyze import plots
    from src.analyze.record import read

    folder = write_csv(tmp_path / "axes", "number,state,value,trainer.batch_size,optimizer.lr,param_count\n"
                       "0,COMPLETE,0.90,32,0.001,21000\n1,COMPLETE,0.93,64,0.002,34000\n"
                       "2,COMPLETE,0.95,128,0.004,45000\n3,COMPLETE,0.94,256,0.003,58000\n")
    (folder / "study.yaml").write_text(yaml.safe_dump({"objectives": {"val_accuracy": "maximize"}, "search_space": {
        "trainer.batch_size": "choice(32, 64, 128, 256)", "optimizer.lr": "float in [0.001, 0.01]"}}))
    record = read(folder)
    assert record.log_scaled == {"trainer.batch_size"}
    size = plots.size(record).axes[0]
    size.figure.canvas.draw()
    labels = [t.get_text() for t in size.get_xticklabels() if t.get_text()]
    assert size.get_xscale() == "log" and {"20,000", "50,000"} <= set(labels), labels
    axes = {ax.get_xlabel(): ax for ax in plots.parameters(record).axes}
    batch, lr = axes["trainer.batch_size"], axes["optimizer.lr"]
    batch.figure.canvas.draw()
    assert batch.get_xscale() == "log" and [t.get_text() for t in batch.get_xticklabels()] == ["32", "64", "128", "256"]
    assert lr.get_xscale() == "linear"


@pytest.mark.parametrize("content, message", [
    (None, "no trials.csv there"),
    ("", "empty file"),
    ('number,state,value\n0,COMPLETE,"0.9\n', "malformed CSV"),
    ("a,b\n1,2\n", "not a sweep's trials.csv (missing column 'number')"),
    ("number,state\n0,COMPLETE\n", "missing column 'value'"),
    ("number,state,value\n0,COMPLETE,high\n", "column 'value' holds 'high'; it must hold numbers"),
    (b"number,state,value,x\n0,COMPLETE,0.9,caf\xe9\n", "not UTF-8 text"),
])
def test_bad_inputs(tmp_path, content, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    if isinstance(content, bytes):
        (folder / "trials.csv").write_bytes(content)
    elif content is not None:
        (folder / "trials.csv").write_text(content)
    result = analyze(folder, expect=2)
    assert len(error_lines(result)) == 1 and message in error_lines(result)[0]


def test_a_glob_skips_folders_where_no_trial_ran_with_a_note(tmp_path):
    """`python -m src.analyze outputs/sweeps/*` over a sweep refused or stopped before its first trial."""
    write_csv(tmp_path / "a", "number,state,value,model.units\n0,COMPLETE,0.9,16\n")
    (tmp_path / "empty").mkdir()
    result = analyze(tmp_path / "a", tmp_path / "empty")
    assert f"note: {tmp_path / 'empty'}: no trials.csv (no trial ran there); skipped" in result.stderr.splitlines()
    assert "0.9" in result.stdout
    result = analyze(tmp_path / "empty", tmp_path / "empty", expect=2)
    assert error_lines(result) == ["error: no trials.csv in any of the 2 folders given; give a sweep folder such as "
                                   "outputs/sweeps/default"]


def test_unknown_by_lists_the_parameters(tmp_path):
    folder = write_csv(tmp_path / "hand", "number,state,value,model.units\n0,COMPLETE,0.9,16\n")
    result = analyze(folder, "--by", "model.unitz", expect=2)
    assert "--by model.unitz: no such column; parameters: model.units" in error_lines(result)[0]


@pytest.mark.parametrize("top", ["0", "-1", "many"])
def test_top_must_be_a_whole_number_of_at_least_one(tmp_path, top):
    folder = write_csv(tmp_path / "hand", "number,state,value,model.units\n0,COMPLETE,0.9,16\n")
    result = analyze(folder, "--top", top, expect=2)
    assert f"argument --top: '{top}': give a whole number >= 1" in result.stderr and "DataFrame" not in result.stdout


def test_needs_neither_tensorflow_nor_optuna(tmp_path):
    folder = write_csv(tmp_path / "hand", "number,state,value,x\n0,COMPLETE,0.9,1\n1,COMPLETE,0.8,2\n")
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "src.analyze", str(folder)], cwd=ROOT,
                            capture_output=True, text=True)
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert result.returncode == 0 and not imported & {"tensorflow", "keras", "optuna"}


def test_report_of_a_sweep_where_every_trial_failed(tmp_path):
    folder = write_csv(tmp_path / "failed", "number,state,value,model.units,error\n"
                       "0,FAIL,,16,diverged: the loss became NaN\n1,FAIL,,32,boom\n")
    result = analyze(folder, "--report")
    assert "Traceback" not in result.stderr
    md = (folder / "report.md").read_text()
    assert "No trial completed." in md and "diverged: the loss became NaN" in md and "boom" in md
    assert "failed: top 5 trials\n(no complete trial)" in result.stdout and "Empty DataFrame" not in result.stdout


def test_report_escapes_what_it_embeds(tmp_path):
    folder = write_csv(tmp_path / "evil", "number,state,value,model.activation,param_count,error\n"
                       "0,COMPLETE,0.9,<script>alert(1)</script>,8671,\n1,COMPLETE,0.8,relu,52760,\n"
                       '2,FAIL,,relu,,"bad | value <b>x</b>"\n')
    analyze(folder, "--report")
    md, page = (folder / "report.md").read_text(), (folder / "report.html").read_text()
    assert "<script>" not in md and "<script>" not in page and "&lt;script&gt;" in page
    assert "bad \\| value &lt;b&gt;x&lt;/b&gt;" in md  # the | cannot split the failures table
    failures = md.split("## Failures")[1]
    assert all(line.count(" | ") == 1 for line in failures.splitlines() if line.startswith("| 2"))
    assert "| 8671 |" in md and "5.276e+04" not in md and "52760" in md  # counts stay whole numbers


def test_report_images_carry_alt_text_and_fit_the_page(quick_sweep, tmp_path):
    import re

    folder = shutil.copytree(quick_sweep[0], tmp_path / "alt")
    analyze(folder, "--report")
    page = (folder / "report.html").read_text()
    alts = re.findall(r'<img alt="([^"]+)"', page)
    assert len(alts) == len(PLOTS) and all(len(a) > 15 for a in alts)
    assert "img{max-width:100%" in page and "white-space:pre-wrap" in page and "<code>" in page
    width = mpimg.imread(folder / "parameters.png").shape[1]
    assert width <= 1100  # two panels a row: shown near full size in the 1000-pixel page


def test_leaderboard_gaps_are_differences_of_six_digit_scores_without_float_noise():
    from src.analyze.tables import flag_gaps

    board = flag_gaps(pd.DataFrame({"value": [0.975278, 0.973611, 0.973611]}), "value", sigma=0.001)
    assert board["gap_to_next"].tolist()[:2] == [0.001667, 0.0]  # 0.0016669999999999 before
    assert board["within_noise"].tolist()[:2] == [False, True] and pd.isna(board["gap_to_next"].iloc[2])
