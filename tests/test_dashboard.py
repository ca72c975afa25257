"""A sweep's study as optuna-dashboard reads it (its own WSGI app and API): one sortable user attribute per
metric, the objective's name, and each epoch's value as an intermediate value even when no pruner runs (learning curves)."""
from __future__ import annotations

import json
from wsgiref.util import setup_testing_defaults

from optuna_dashboard import wsgi

from conftest import run_cli


def api(app, path: str, query: str = "") -> dict:
    environ: dict = {}
    setup_testing_defaults(environ)
    environ.update(PATH_INFO=path, QUERY_STRING=query)
    status = {}
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.update(code=s)))
    assert status["code"].startswith("200"), (status, body[:500])
    return json.loads(body)


def test_dashboard_sorts_by_each_metric_and_draws_learning_curves(tmp_path, data_dir):
    out = tmp_path / "dash"
    run_cli("sweep", "-m", f"hydra.sweep.dir={out}", "hydra.sweeper.params=null", "hydra.sweeper.confirm.top_k=1",
            "hydra.sweeper.confirm.seeds=1", "data.n_train=600", "trainer.epochs=3", "model.units=int(interval(8,32))",
            "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner=none", "hydra.sweeper.study_name=dash")
    app = wsgi(f"sqlite:///{out / 'study.db'}")
    summaries = {s["study_name"]: s for s in api(app, "/api/studies")["study_summaries"]}
    assert set(summaries) == {"dash", "dash:confirm", "dash:test"}
    for name in ("dash:confirm", "dash:test"):  # the confirmation's queues read as parts of the sweep
        attrs = {a["key"]: a["value"] for a in summaries[name]["user_attrs"]}
        assert attrs["sweep"] == "dash" and "(not a search)" in attrs["role"], attrs
        queue = api(app, f"/api/studies/{summaries[name]['study_id']}", "after=0")
        assert queue["objective_names"] == ["val_accuracy"] and len(queue["trials"]) == (1 if name == "dash:confirm" else 2)
    study = api(app, f"/api/studies/{summaries['dash']['study_id']}", "after=0")
    assert study["objective_names"] == ["val_accuracy"]  # the objective named, not "Objective 0"
    sortable = {a["key"]: a["sortable"] for a in study["union_user_attrs"]}
    assert sortable["val_accuracy"] and sortable["param_count"] and sortable["seconds"]
    assert study["has_intermediate_values"]
    for trial in study["trials"]:
        assert [v["step"] for v in trial["intermediate_values"]] == [1, 2, 3]
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert abs(float(attrs["val_accuracy"]) - trial["values"][0]) < 1e-6
