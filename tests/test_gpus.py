"""GPUs for local workers (hydra.sweeper.gpus_per_worker), tested without a GPU by the environment each worker sees."""
from __future__ import annotations

import json

import pytest

from conftest import error_lines, run_cli

from src.errors import UserError
from src.sweep import gpus

TINY = ["hydra.sweeper.params=null", "hydra.sweeper.confirm.top_k=0", "data.n_train=600", "trainer.epochs=1",
        "model.units=8,16", "hydra.sweeper.n_trials=2", "hydra.sweeper.test_overrides=[]"]


def test_each_worker_gets_its_own_devices(monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7,9")
    assert gpus.slices(2, 2) == [["3", "5"], ["6", "7"]]
    assert gpus.slices(2, 4) == [["3", "5"], ["6", "7"]] and "capped at 2: 5 GPU(s), 2 per worker" in capsys.readouterr().out
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UserError, match=r"gpus_per_worker=1: this machine has 0 visible GPU\(s\) \(CUDA_VISIBLE_DEVICES=''\)"):
        gpus.slices(1, 1)


@pytest.mark.slow
def test_worker_processes_see_their_slice_and_grow_gpu_memory(tmp_path, data_dir):
    record = tmp_path / "env"
    record.mkdir()
    run_cli("sweep", "-m", f"hydra.sweep.dir={tmp_path / 'out'}", *TINY, "hydra.sweeper.n_workers=2",
            "hydra.sweeper.gpus_per_worker=2", "hydra.sweeper.worker_init=tests.apps.record_env.record",
            env={"CUDA_VISIBLE_DEVICES": "3,5,6,7", "RECORD_DIR": str(record)})
    seen = [json.loads(p.read_text()) for p in record.glob("*.json")]
    assert sorted(s["CUDA_VISIBLE_DEVICES"] for s in seen) == ["3,5", "6,7"]  # no process sees another's devices
    assert all(s["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" and s["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" for s in seen)


@pytest.mark.slow
def test_gpus_asked_where_none_is_visible_is_one_line(tmp_path, data_dir):
    result = run_cli("sweep", "-m", f"hydra.sweep.dir={tmp_path / 'out'}", *TINY, "hydra.sweeper.gpus_per_worker=1",
                     env={"CUDA_VISIBLE_DEVICES": ""}, expect=2)
    assert error_lines(result) == ["error: hydra.sweeper.gpus_per_worker=1: this machine has 0 visible GPU(s) "
                                   "(CUDA_VISIBLE_DEVICES=''); use a smaller value, or 0 for the CPU"]
