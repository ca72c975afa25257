"""Search spaces in hydra-optuna-sweeper's syntax, parsed with Hydra's override grammar (never `eval`).

    interval(a,b)            float in [a, b]           -> FloatDistribution(a, b)
    int(interval(a,b))       integer in [a, b]         -> IntDistribution(a, b)
    tag(log, interval(a,b))  log scale (a > 0)         -> ...Distribution(a, b, log=True)
    range(a,b[,step])        a, a+step, ... < b        -> Int/FloatDistribution(a, last, step)
    choice(x,y,...) or x,y   one of the values         -> CategoricalDistribution
    plain value              fixed for every trial     -> an override passed through as is
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from hydra.errors import HydraException
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)

from ..errors import UserError

FORMS = "interval(a,b), int(interval(a,b)), tag(log, interval(a,b)), range(a,b[,step]), choice(x,y,...)"


@dataclass
class SearchSpace:
    """What a sweep searches (`distributions`) and what it fixes for every trial (`fixed` overrides)."""

    distributions: dict[str, BaseDistribution] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The Hydra overrides of one trial: the fixed ones, then its sampled `params`."""
        return self.fixed + [f"{key}={format_value(value)}" for key, value in params.items()]

    def grid(self) -> dict[str, list[Any]]:
        """Every value of every parameter, for the grid sampler (which cannot sample intervals)."""
        grid = {}
        for key, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                grid[key] = list(dist.choices)
            elif dist.step is not None and not dist.log:
                count = int(round((dist.high - dist.low) / dist.step)) + 1
                grid[key] = [_clean(dist.low + i * dist.step) for i in range(count)]
            else:
                raise UserError(f"sampler=grid cannot enumerate {key} ({describe(dist)}); "
                                f"use choice(...) or range(...) for every parameter of a grid search")
        return grid


def parse(params: Mapping[str, Any] | None, arguments: Iterable[str]) -> SearchSpace:
    """The search space from the config's `params` and the command line's overrides (which win)."""
    lines = {str(key): f"{key}={format_value(value)}" for key, value in (params or {}).items()}
    parser = OverridesParser.create()
    for argument in arguments:
        lines[_parse(parser, argument).get_key_element()] = argument
    space = SearchSpace()
    for key, line in lines.items():
        override = _parse(parser, line)
        if override.is_sweep_override():
            space.distributions[key] = to_distribution(override)
        else:
            space.fixed.append(line)
    return space


def _parse(parser: OverridesParser, line: str) -> Override:
    try:
        return parser.parse_override(line)
    except HydraException as e:
        raise UserError(f"cannot parse search parameter {line!r}: {e}; forms: {FORMS}") from None


def to_distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override, or a clear error for an empty or unknown one."""
    key, value = override.get_key_element(), override.value()
    unknown = sorted(set(getattr(value, "tags", None) or ()) - ({"log"} if isinstance(value, IntervalSweep) else set()))
    if unknown:  # e.g. tag(lg, ...): a typo would silently sample on a linear scale
        raise UserError(f"{override.input_line!r}: tag {unknown[0]!r} means nothing here; the one tag read is log, on "
                        f"an interval: tag(log, interval(a,b))")
    if isinstance(value, ChoiceSweep) or (isinstance(value, RangeSweep) and value.shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        bad = [c for c in choices if not isinstance(c, (str, int, float, bool))]
        if bad:
            raise UserError(f"{key}: choice value {bad[0]!r} is not a string, number or bool")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if step is None or step <= 0:
            raise UserError(f"{key}=range({start},{stop},{step}): the step must be > 0")
        if start >= stop:
            raise UserError(f"{key}=range({start},{stop}) is empty: the end is excluded, so it needs start < end")
        last = _clean(start + (math.ceil((stop - start) / step) - 1) * step)
        if all(isinstance(v, int) for v in (start, stop, step)):
            return IntDistribution(start, int(last), step=step)
        return FloatDistribution(float(start), float(last), step=float(step))
    if isinstance(value, IntervalSweep):
        low, high, log = value.start, value.end, "log" in value.tags
        if low >= high:
            raise UserError(f"{key}=interval({low},{high}) is empty: it needs low < high")
        if log and low <= 0:
            raise UserError(f"{key}=tag(log, interval({low},{high})): a log scale needs low > 0")
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log)
        return FloatDistribution(float(low), float(high), log=log)
    raise UserError(f"{override.input_line!r}: {type(value).__name__} is not supported; forms: {FORMS}")


def describe(dist: Any) -> str:
    """A distribution as a reader writes it: `int in [8, 512], log`, `choice(relu, tanh)`."""
    if hasattr(dist, "choices"):
        return f"choice({', '.join(map(str, dist.choices))})"
    kind = "int" if type(dist).__name__ == "IntDistribution" else "float"
    step = f", step {dist.step}" if dist.step not in (None, 1) else ""
    return f"{kind} in [{dist.low}, {dist.high}]" + (", log" if dist.log else "") + step


def override_key(line: str) -> str:
    """The key an override line sets: `model.units` of `+model.units=8`, `~model.units` or `model.units=8`."""
    return line.split("=", 1)[0].lstrip("+~")


def format_value(value: Any) -> str:
    """A Python value as Hydra override text: `null`, `true`, `0.001`, `relu`, `[16,32]`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def _clean(x: float | int) -> float | int:
    """Drop the float noise of repeated addition: 0.30000000000000004 -> 0.3."""
    return x if isinstance(x, int) else float(f"{x:.12g}")

