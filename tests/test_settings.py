"""hydra.sweeper.* as SweeperSettings: hydra-optuna-sweeper's keys mapped onto ours, bad values refused."""
from __future__ import annotations

import pytest

from src.errors import UserError
from src.sweep.settings import SweeperSettings


def test_hos_keys_map_onto_ours():
    s = SweeperSettings(direction="minimize", n_jobs=3, sampler={"_target_": "optuna.samplers.NSGAIISampler"},
                        pruner={"_target_": "optuna.pruners.MedianPruner"})
    assert s.directions == ["minimize"] and s.n_workers == 3
    assert s.sampler_name == "NSGAIISampler" and s.pruner_name == "MedianPruner" and s.pruning
    assert SweeperSettings(direction=["maximize", "minimize"], objectives=["a", "b"]).directions == ["maximize", "minimize"]
    assert not SweeperSettings(pruner={"_target_": "optuna.pruners.NopPruner"}).pruning


@pytest.mark.parametrize("kwargs, message", [
    ({"max_failure_rate": 1.5}, "max_failure_rate=1.5: use a share in [0, 1]"),
    ({"sampler": {"seed": 1}}, "give a sampler name or a block with _target_"),
    ({"direction": ["maximize", "minimize"]}, "give one direction (maximize or minimize) per objective"),
    ({"n_jobs": 0}, "hydra.sweeper.n_workers=0: use an integer >= 1"),
    ({"study_name": "../../../escape"}, "study_name='../../../escape': use one folder name"),
    ({"study_name": "a/b c"}, "study_name='a/b c': use one folder name"),
    ({"study_name": ".."}, "study_name='..': use one folder name"),
    ({"study_name": "a\\b"}, "study_name='a\\\\\\\\b': use one folder name"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        SweeperSettings(**kwargs)
