"""hydra.sweeper.* as SweeperSettings: hydra-optuna-sweeper's keys mapped onto ours, bad values refused."""
from __future__ import annotations

import importlib.util

import pytest

from src.errors import UserError
from src.sweep.settings import SweeperSettings


def test_hos_keys_map_onto_ours():
    s = SweeperSettings(direction="minimize", n_jobs=3, sampler={"_target_": "optuna.samplers.BruteForceSampler"},
                        pruner={"_target_": "optuna.pruners.MedianPruner"})
    assert s.directions == ["minimize"] and s.n_workers == 3
    assert s.notes == ["hydra.sweeper.n_jobs=3: worker processes of this command, each claiming trials as it finishes "
                       "(hydra-optuna-sweeper: trials per batch of its launcher)"]
    assert s.sampler_name == "BruteForceSampler" and s.pruner_name == "MedianPruner" and s.pruning
    assert SweeperSettings(direction=["maximize", "minimize"], objectives=["a", "b"]).directions == ["maximize", "minimize"]
    assert not SweeperSettings(pruner={"_target_": "optuna.pruners.NopPruner"}).pruning


def test_without_direction_or_objectives_a_task_value_is_minimized_as_in_hos_with_a_note():
    s = SweeperSettings()
    assert s.objectives == ["value"] and s.directions == ["minimize"]
    assert s.notes == ["no hydra.sweeper.direction: the task's value is minimized (hydra-optuna-sweeper's default); "
                       "set direction: maximize to maximize it"]
    two = SweeperSettings(direction=["minimize", "minimize"])
    assert two.objectives == ["v0", "v1"] and not two.notes
    assert SweeperSettings(objectives=["val_accuracy"], directions=["maximize"]).notes == []


@pytest.mark.parametrize("block, name, seed, knobs", [
    ({"seed": 123}, "tpe", 123, {"n_startup_trials": 10}),  # HOS: a block without _target_ is TPE's
    ({"_target_": "optuna.samplers.TPESampler", "seed": None, "n_startup_trials": 4, "multivariate": None},
     "tpe", 0, {"n_startup_trials": 4, "multivariate": False, "constant_liar": True}),  # null: ours
    ({"_target_": "optuna.samplers.NSGAIISampler", "seed": 3, "population_size": 8}, "nsgaii", 3,
     {"population_size": 8}),
    ({"_target_": "optuna.samplers.MOTPESampler", "n_ehvi_candidates": 24}, "tpe", 0, {"n_startup_trials": 10}),
    ("motpe", "tpe", 0, {"constant_liar": True}),
    ("qmc", "qmc", 0, {"qmc_type": "sobol"}),
])
def test_sampler_blocks_of_known_classes_run_as_their_names(block, name, seed, knobs):
    s = SweeperSettings(sampler=block)
    assert s.sampler == name and s.seed == seed and knobs.items() <= s.samplers[name].items()
    if "MOTPE" in str(block) or block == "motpe":
        assert any("MOTPESampler runs as TPESampler" in n for n in s.notes)
    assert ("n_ehvi_candidates dropped" in " ".join(s.notes)) == ("n_ehvi" in str(block))


def test_every_sampler_option_of_the_group_makes_its_sampler():
    from src.sweep.samplers import TrialSeeded, make_sampler
    from src.sweep.settings import SAMPLER_OPTIONS, sampler_option
    from src.sweep.space import parse

    space = parse({"x": "choice(1, 2)"}, [])
    for name in SAMPLER_OPTIONS:
        s = SweeperSettings(sampler=sampler_option(name))
        if s.sampler == "gp" and importlib.util.find_spec("torch") is None:
            with pytest.raises(UserError, match=r"sampler=gp: Optuna's GPSampler needs PyTorch \(pip install torch\)"):
                make_sampler(s.sampler, s.seed, {}, space)
            continue
        sampler = make_sampler(s.sampler, s.seed, s.samplers.get(s.sampler_name) or {}, space)
        inner = sampler.of(0) if isinstance(sampler, TrialSeeded) else sampler
        assert type(inner).__name__ == SAMPLER_OPTIONS["tpe" if name == "motpe" else name][0]


def test_search_space_is_read_as_params_with_the_same_values():
    s = SweeperSettings(search_space={"x": {"type": "float", "low": -5.5, "high": 5.5, "step": 0.5},
                                      "y": {"type": "categorical", "choices": [-5, 0, 5]},
                                      "n": {"type": "int", "low": 1, "high": 10, "step": 3},
                                      "lr": {"type": "float", "low": 1e-3, "high": 1, "log": True},
                                      "k": {"type": "int", "low": 2, "high": 64, "log": True}},
                        params={"y": "choice(0, 5)"})
    from src.sweep.space import parse

    d = parse(s.params, []).distributions
    assert (d["x"].low, d["x"].high, d["x"].step) == (-5.5, 5.5, 0.5)
    assert list(d["y"].choices) == [0, 5]  # params win over search_space
    assert (d["n"].low, d["n"].high, d["n"].step) == (1, 10, 3)
    assert (d["lr"].low, d["lr"].high, d["lr"].log) == (1e-3, 1.0, True) and type(d["lr"]).__name__ == "FloatDistribution"
    assert (d["k"].low, d["k"].high, d["k"].log) == (2, 64, True) and type(d["k"]).__name__ == "IntDistribution"
    assert any(n.startswith("hydra.sweeper.search_space is deprecated") for n in s.notes)


@pytest.mark.parametrize("kwargs, message", [
    ({"max_failure_rate": 1.5}, "max_failure_rate=1.5: use a share in [0, 1]"),
    ({"direction": ["maximize", "minimize"], "objectives": ["a"]}, "give one direction (maximize or minimize) per objective"),
    ({"search_space": {"x": {"type": "float", "low": 1}}}, "search_space.x={'type': 'float', 'low': 1}: give type int"),
    ({"search_space": {"data.n_train": 2000}}, "search_space.data.n_train=2000: give type int"),
    ({"n_jobs": 0}, "hydra.sweeper.n_jobs=0: use an integer >= 1"),
    ({"n_workers": 0}, "hydra.sweeper.n_workers=0: use an integer >= 1"),
    ({"study_name": "../../../escape"}, "study_name='../../../escape': use one folder name"),
    ({"study_name": "a/b c"}, "study_name='a/b c': use one folder name"),
    ({"study_name": ".."}, "study_name='..': use one folder name"),
    ({"study_name": "a\\b"}, "study_name='a\\\\\\\\b': use one folder name"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        SweeperSettings(**kwargs)


def test_a_direction_that_looks_the_wrong_way_for_its_metric_gets_a_note():
    """A hydra-optuna-sweeper file's `direction: minimize` meeting the default objective (val_accuracy) would make the
    least accurate model the best: legal, so a note, not an error."""
    from src.sweep.prepare import direction_notes

    assert direction_notes(SweeperSettings(direction="minimize", objectives=["val_accuracy"])) == [
        "hydra.sweeper.directions: minimize val_accuracy: the best trial has the lowest val_accuracy; to score another "
        "metric, set hydra.sweeper.objectives (e.g. [val_loss] with direction minimize)"]
    assert direction_notes(SweeperSettings(directions=["maximize", "minimize"], objectives=["val_accuracy", "val_loss"])) == []
    assert len(direction_notes(SweeperSettings(directions=["maximize"], objectives=["val_loss"]))) == 1
    assert direction_notes(SweeperSettings(direction="minimize", objectives=["value"])) == []  # another app's
