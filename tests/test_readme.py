"""The README's commands, run exactly as written, in order, in one shell, as a new user would after the
Quick start. Blocks fenced ```bash are run; blocks fenced ```sh are set-up or infrastructure a test cannot
run here (creating the venv and installing, which CI's .ci/run does; this test suite itself; Docker,
apt, a remote PostgreSQL), and ```text blocks are sample output."""
from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from conftest import ROOT


def readme_blocks(fence: str) -> list[str]:
    return re.findall(rf"```{fence}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_fences_are_known():
    fences = set(re.findall(r"^```(\w*)$", (ROOT / "README.md").read_text(), flags=re.M)) - {""}
    assert fences <= {"bash", "sh", "text"}, fences
    assert len(readme_blocks("bash")) >= 4


def test_readme_commands_run_as_written(tmp_path, data_dir):
    """A copy of the project beside a `shared/` folder, as on a fresh clone; the project's venv linked in."""
    main = tmp_path / "work" / "main"
    for part in ("src", "conf", "sweeps", "hydra_plugins", "examples"):
        shutil.copytree(ROOT / part, main / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    (main / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / "work" / "shared" / "datasets").mkdir(parents=True)
    (tmp_path / "work" / "shared" / "datasets" / "fashion-mnist").symlink_to(data_dir)
    script = "set -euo pipefail\n" + "\n".join(readme_blocks("bash"))
    result = subprocess.run(["bash", "-c", script], cwd=main, capture_output=True, text=True, timeout=900,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 0, f"STDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-3000:]}"
    assert "train one Keras dense network" in result.stdout and "an Optuna search" in result.stdout
    best = yaml.safe_load((main / "outputs/sweeps/quick/best.yaml").read_text())
    assert best["test"]["test_accuracy"] > 0.5 and best["test"]["seeds"] == 2  # confirmed: the winner, per seed
    assert "confirmed over 2 seeds" in result.stdout
    assert (main / "outputs/sweeps/wide/trials.csv").is_file() and (main / "outputs/sweeps/quick/report.html").is_file()
    assert "Best of each sweep" in result.stdout and "| model.activation |" in result.stdout
    assert len(list((main / "outputs/runs").iterdir())) == 4
