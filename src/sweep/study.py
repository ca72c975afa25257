"""The study: created or joined by any number of processes, its search space kept, its best trial.

Where it is stored is `storage.py`; the budget rules are `budget.py`; trials cut short, `recovery.py`.
"""
from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from ..errors import UserError, first_line
from .space import override_key
from .storage import retrying

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat API
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
optuna.logging.set_verbosity(optuna.logging.WARNING)  # one progress line per trial is ours to print


def sign(study: optuna.Study) -> int:
    """+1 when the first objective is maximized, -1 when minimized: `sign * value` is larger for better."""
    return 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1


def open_study(storage: optuna.storages.BaseStorage, name: str, directions: list[str],
               sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Create the study or load it (two processes creating it at once both get it); directions must match."""
    try:
        study = retrying(lambda: optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                                     directions=directions, sampler=sampler, pruner=pruner),
                         lambda e: not isinstance(e, ValueError))
    except Exception as e:  # noqa: BLE001 - a bad study, or a storage that kept failing
        raise UserError(f"cannot open study {name!r}: {first_line(e)}") from None
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise UserError(f"study {name!r} was created with directions {stored}, not {directions}; "
                        f"set hydra.sweeper.study_name to start a new study")
    return study


# Fixed overrides that change how a run shows or saves itself, not its numbers: a rerun may change them.
SHOWN_ONLY = {"trainer.verbose", "trainer.tensorboard", "trainer.save_model"}


def _by_key(overrides: list[str]) -> dict[str, str]:
    return {override_key(line): line for line in overrides}


def check_space(study: optuna.Study, space: dict[str, str], fixed: list[str], defined: list[str] | None) -> None:
    """Refuse a search space that differs from the study's (a searched key added, dropped or changed),
    described as `describe` writes them, and changed fixed overrides or sweep definition settings (`defined`,
    as overrides; None: unknown, not checked): the data, the model or the training differ; but for SHOWN_ONLY,
    which get a note. The first run records them (a study made before `defined` was recorded takes this run's)."""
    stored = study.user_attrs.get("search_space")
    for key in sorted(set(stored or {}) | set(space)):
        old, new = (stored or {}).get(key), space.get(key)
        if stored is not None and old != new:
            raise UserError(f"study {study.study_name!r} searched {key} as {old or 'nothing (not searched)'}; "
                            f"this run asks {new or 'nothing (not searched)'}: set hydra.sweeper.study_name "
                            f"to start a new study")
    before = study.user_attrs.get("fixed")
    if before is not None and sorted(before) != sorted(fixed):
        old, new = _by_key(before), _by_key(fixed)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in SHOWN_ONLY)
        if changed:  # its trials, confirmation runs and best would mix two questions
            key = changed[0]
            raise UserError(f"study {study.study_name!r} ran with {old.get(key) or f'no {key} override'}; this run "
                            f"has {new.get(key) or f'no {key} override'}: rerun with the study's fixed overrides "
                            f"({' '.join(before) or 'none'}), or set hydra.sweeper.study_name to start a new study")
        print(f"note: study {study.study_name!r} ran with fixed overrides {sorted(before)}; this run has "
              f"{sorted(fixed)}", flush=True)
    if defined is not None:
        _check_definition(study, defined, set(space))
    if "search_space" not in study.user_attrs:
        study.set_user_attr("search_space", space)
        study.set_user_attr("fixed", fixed)
    if "defined" not in study.user_attrs and defined is not None:
        study.set_user_attr("defined", defined)


def _check_definition(study: optuna.Study, defined: list[str], searched: set[str]) -> None:
    """Refuse settings of the sweep definition (outside its params) that changed since the study's first run, but
    for searched keys (every trial sets its own) and SHOWN_ONLY."""
    old, new = _by_key(study.user_attrs.get("defined", defined)), _by_key(defined)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in SHOWN_ONLY | searched)
    if changed:
        key = changed[0]
        raise UserError(f"study {study.study_name!r} ran with {old.get(key) or f'no {key} setting'} from its sweep "
                        f"definition; this run has {new.get(key) or f'no {key} setting'}: rerun with the study's "
                        f"definition, or set hydra.sweeper.study_name to start a new study")


def suggest(trial: optuna.Trial, distributions: dict[str, BaseDistribution]) -> dict[str, Any]:
    """Draw the trial's params (a queued retry keeps the params it already has)."""
    for name, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, IntDistribution):
            trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return dict(trial.params)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial by the first objective (on a multi-objective study: among the Pareto front)."""
    candidates = study.best_trials if len(study.directions) > 1 else \
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not candidates:
        return None
    return max(candidates, key=lambda t: (sign(study) * t.values[0], -t.number))


def best_test(study: optuna.Study) -> dict[str, Any] | None:
    """The test score recorded by the best trial's replay, if the current best trial has been replayed."""
    best, test = best_trial(study), study.user_attrs.get("best_test")
    return test if best is not None and test and test.get("trial") == best.number else None
