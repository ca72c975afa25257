"""The sweeper's fast trial configs (src/sweep/compose.py) equal Hydra's full composition, hydra node included."""
from __future__ import annotations

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import ROOT
from src.schema import register
from src.sweep.compose import Composer

CASES = [
    ["data.n_train=3000", "model.units=35", "model.activation=relu", "optimizer.lr=0.0074", "++trainer.save_model=true"],
    ["data.n_train=3000", "model.units=12", "model.activation=tanh", "optimizer.lr=0.001", "++trainer.save_model=true"],
    ["data.n_train=null", "model.units=64", "model.activation=gelu", "optimizer.lr=1e-4", "++trainer.save_model=true"],
    ["optimizer=sgd", "model.units=8", "optimizer.lr=0.1"],  # a group choice: a shape of its own
    ["optimizer=sgd", "model.units=9", "optimizer.lr=0.2"],
    ["optimizer=adam", "model.units=9", "optimizer.lr=0.2"],
    ["model.units=9", "+model.extra=1"],  # an addition is never a plain value
    ["model.units=10", "+model.extra=2"],
    ["model.units=11", "model={units: 12}"],  # touched twice: both composed in full
    ["model.units=13", "model={units: 14}"],
    ["model.units=15", "hydra.job.chdir=false"],
    ["model.units=16", "hydra.job.chdir=true"],
]


@pytest.fixture(scope="module")
def loader_and_master():
    register()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(ROOT / "conf")))
    master = loader.load_configuration("sweep", overrides=["hydra.sweeper.n_trials=3"], run_mode=RunMode.MULTIRUN)
    return loader, master


def test_fast_compose_equals_hydra_compose(loader_and_master):
    loader, master = loader_and_master
    composer = Composer(loader, master)
    for overrides in CASES + CASES[::-1]:  # every shape is seen once composed in full, then filled
        fast = composer.load(overrides)
        full = loader.load_sweep_config(master, overrides)
        assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(full), overrides
        fast.hydra.job.num = 99  # a job's own config is changed by its job; the next trial's is not
    assert len(composer.templates) == 9  # the 3 plain-valued trials and the sgd pair share one each


def test_fast_compose_checks_types_as_hydra_does(loader_and_master):
    loader, master = loader_and_master
    composer = Composer(loader, master)
    composer.load(["model.units=8"])
    with pytest.raises(ConfigCompositionException, match="model.units=abc"):
        composer.load(["model.units=abc"])
    with pytest.raises(ConfigCompositionException, match="model.units=abc"):
        loader.load_sweep_config(master, ["model.units=abc"])
