"""The replay line's values: each config value written as override text reads back as the same value."""
from __future__ import annotations

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from src.sweep.replay import override_value

VALUES = [None, True, False, 0, 5, 0.001, 1e-05, "relu", "keras.losses.Huber", "a b", "it's", "a\\b", "c:\\x\\",
          "q\\'x", "x,y", "1", "null", "true", "", [0, 2, 4], [], ["a b", 1], {"_target_": "x.Y", "k": 0.1, "s": "a b"},
          "${trainer.seed}", "${oc.env:FASHION_MNIST_DIR,null}"]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_value_written_for_the_replay_line_reads_back_the_same(value):
    parsed = OverridesParser.create().parse_override(f"key={override_value(value)}").value()
    assert parsed == value and type(parsed) is type(value)
