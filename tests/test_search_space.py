"""The search-space syntax (hydra-optuna-sweeper's) parsed by Hydra's grammar into Optuna distributions."""
from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from src.errors import UserError
from src.sweep.space import parse


def one(expression: str):
    return parse({"x": expression}, []).distributions["x"]


def test_each_form():
    assert one("interval(0.1, 1)") == FloatDistribution(0.1, 1.0)
    assert one("int(interval(16, 512))") == IntDistribution(16, 512)
    assert one("tag(log, interval(1e-4, 1e-1))") == FloatDistribution(1e-4, 1e-1, log=True)
    assert one("tag(log, int(interval(8, 512)))") == IntDistribution(8, 512, log=True)
    assert one("choice(relu, tanh)") == CategoricalDistribution(["relu", "tanh"])
    assert one("choice(16, 32, 64)") == CategoricalDistribution([16, 32, 64])
    widths = parse({"model.widths": "choice([64,32],[128])"}, [])  # lists are chosen as override text
    assert widths.overrides({"model.widths": "[64,32]"}) == ["model.widths=[64,32]"]


def test_range_excludes_its_end():
    assert one("range(1, 5)") == IntDistribution(1, 4)
    assert one("range(0, 10, 3)") == IntDistribution(0, 9, step=3)
    assert one("range(2, 9, 3)") == IntDistribution(2, 8, step=3)
    assert one("range(0.1, 0.5, 0.1)") == FloatDistribution(0.1, 0.4, step=0.1)


def test_plain_values_are_fixed_and_cli_wins():
    space = parse({"model.units": "int(interval(8, 64))", "data.n_train": None, "trainer.epochs": 3},
                  ["model.units=32", "model.activation=relu,tanh", "trainer.test=false"])
    assert space.fixed == ["model.units=32", "data.n_train=null", "trainer.epochs=3", "trainer.test=false"]
    assert space.distributions == {"model.activation": CategoricalDistribution(["relu", "tanh"])}
    assert space.overrides({"model.activation": "tanh"})[-1] == "model.activation=tanh"


def test_grid_enumerates_choices_and_ranges():
    space = parse({"a": "range(1, 4)", "b": "choice(x, y)", "c": "range(0.1, 0.3, 0.1)"}, [])
    assert space.grid() == {"a": [1, 2, 3], "b": ["x", "y"], "c": [0.1, 0.2]}
    with pytest.raises(UserError, match="sampler=grid cannot enumerate d"):
        parse({"d": "interval(0, 1)"}, []).grid()


@pytest.mark.parametrize("expression, message", [
    ("interval(5, 5)", r"x=interval\(5.0,5.0\) is empty: it needs low < high"),
    ("int(interval(9, 2))", r"x=interval\(9,2\) is empty"),
    ("range(5, 1)", r"x=range\(5,1\) is empty: the end is excluded"),
    ("range(3, 3)", "is empty"),
    ("range(1, 5, -1)", "the step must be > 0"),
    ("tag(log, interval(0, 1))", "a log scale needs low > 0"),
    ("tag(log, interval(-1, 1))", "a log scale needs low > 0"),
    ("glob(*)", "not supported; forms: interval"),
    ("intervl(1, 2)", "cannot parse search parameter 'x=intervl"),
])
def test_errors_before_any_trial(expression, message):
    with pytest.raises(UserError, match=message):
        one(expression)
