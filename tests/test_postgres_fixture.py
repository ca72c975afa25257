"""The session's real PostgreSQL server (tests/postgres.py) backs Optuna's RDBStorage, with password auth on."""
from __future__ import annotations

import optuna
import psycopg2
import pytest

import conftest

# The session fixture `postgres` comes from tests/postgres.py; imported here only while conftest.py
# does not import it, so that the session never gets two fixture definitions (two servers).
if not hasattr(conftest, "postgres"):
    from postgres import postgres  # noqa: F401


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning",
                            "ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_optuna_rdb_storage_on_postgres(postgres):  # noqa: F811
    url = postgres.new_database("fixture_smoke")
    assert url == (f"postgresql+psycopg2://sweeper:{postgres.password}@127.0.0.1:{postgres.port}/fixture_smoke")
    assert postgres.password not in repr(postgres)

    storage = optuna.storages.RDBStorage(url, heartbeat_interval=1, grace_period=2)
    try:
        study = optuna.create_study(study_name="smoke", storage=storage, direction="minimize")
        for i in range(3):
            trial = study.ask()
            x = trial.suggest_float("x", -1.0, 1.0)
            study.tell(trial, x * x + i)
    finally:
        storage.engine.dispose()

    loaded_storage = optuna.storages.RDBStorage(url)
    try:
        loaded = optuna.load_study(study_name="smoke", storage=loaded_storage)
        trials = loaded.get_trials(deepcopy=False)
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
        assert [t.number for t in trials] == [0, 1, 2]
        assert all(t.value == pytest.approx(t.params["x"] ** 2 + t.number) for t in trials)
        assert loaded.best_value == min(t.value for t in trials)
    finally:
        loaded_storage.engine.dispose()

    # Password auth is really on: a wrong password and no password are both refused.
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        postgres.connect("fixture_smoke", password="not-the-password")
    with pytest.raises(psycopg2.OperationalError):
        postgres.connect("fixture_smoke", password="")
    postgres.connect("fixture_smoke").close()  # the right one works


def test_set_user_attrs_on_postgres(postgres):  # noqa: F811
    from test_study import check_set_user_attrs

    check_set_user_attrs(postgres.new_database("user_attrs"))
