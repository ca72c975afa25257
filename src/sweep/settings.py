"""`hydra.sweeper.*`: the sweeper's settings as a Hydra structured config, checked once when a sweep starts.

The Hydra plugin registers this schema; nothing here imports Optuna, so Hydra's start-up stays light.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from ..errors import UserError

# hydra-optuna-sweeper's `hydra/sweeper/sampler` group (plus `gp`): option -> Optuna class, and the fields a block
# of it may set. A block of a class named here is run as that sampler name: its seed becomes `seed`, its other
# fields override `samplers.<name>` (null: ours or Optuna's default). MOTPESampler is TPESampler since Optuna 4.
SAMPLER_OPTIONS: Dict[str, tuple] = {
    "tpe": ("TPESampler", ("consider_prior", "prior_weight", "consider_magic_clip", "consider_endpoints",
                           "n_startup_trials", "n_ei_candidates", "multivariate", "group",
                           "warn_independent_sampling", "constant_liar")),
    "random": ("RandomSampler", ()),
    "cmaes": ("CmaEsSampler", ("x0", "sigma0", "n_startup_trials", "independent_sampler", "warn_independent_sampling",
                               "consider_pruned_trials", "restart_strategy", "popsize", "inc_popsize",
                               "use_separable_cma", "with_margin", "lr_adapt")),
    "nsgaii": ("NSGAIISampler", ("population_size", "mutation_prob", "crossover_prob", "swapping_prob")),
    "motpe": ("MOTPESampler", ("consider_prior", "prior_weight", "consider_magic_clip", "consider_endpoints",
                               "n_startup_trials", "n_ehvi_candidates")),
    "qmc": ("QMCSampler", ("qmc_type", "scramble", "warn_independent_sampling")),
    "grid": ("GridSampler", ()),
    "gp": ("GPSampler", ("n_startup_trials", "deterministic_objective")),
}
SAMPLER_NAMES = {cls: ("tpe" if name == "motpe" else name) for name, (cls, _) in SAMPLER_OPTIONS.items()}


def sampler_option(name: str) -> Dict[str, Any]:
    """The `hydra/sweeper/sampler` option `name` as a config node: a `_target_` block, every field null.

    Untyped on purpose: a sweep file may still replace the block by a sampler's name or by another class's
    block, which a typed node refuses to merge; bad values are refused in one line when the sampler is made."""
    cls, fields = SAMPLER_OPTIONS[name]
    return {"_target_": f"optuna.samplers.{cls}", "seed": None, **dict.fromkeys(fields)}


def search_space_params(search_space: Dict[str, Any]) -> Dict[str, str]:
    """hydra-optuna-sweeper's deprecated `search_space` entries ({type, low, high, step, log, choices}) as params
    expressions with the same values: its int and float bounds include `high`, Hydra's `range` excludes its end."""
    params = {}
    for key, d in search_space.items():
        d = dict(d) if isinstance(d, dict) else {}  # not a block (e.g. `model.units: 8`): refused below
        kind, low, high, step, log = str(d.get("type")).split(".")[-1], d.get("low"), d.get("high"), d.get("step"), d.get("log")
        if kind == "categorical" and d.get("choices"):
            params[key] = "choice(" + ", ".join(str(c) for c in d["choices"]) + ")"
        elif kind in ("int", "float") and low is not None and high is not None:
            cast = int if kind == "int" else float
            if step is not None and not log:
                end = int(high) + 1 if kind == "int" else float(high) + float(step) / 2
                params[key] = f"range({cast(low)}, {end}, {cast(step)})"
            else:
                bounds = f"interval({cast(low)}, {cast(high)})"
                bounds = f"int({bounds})" if kind == "int" else bounds
                params[key] = f"tag(log, {bounds})" if log else bounds
        else:
            raise UserError(f"hydra.sweeper.search_space.{key}={search_space[key]}: give type int or float with low and high, "
                            f"or type categorical with choices")
    return params


@dataclass
class MlflowSettings:
    """`hydra.sweeper.mlflow`: log each finished trial as an MLflow run (pip install -e '.[mlflow]')."""

    tracking_uri: Optional[str] = None    # null: off; e.g. sqlite:///mlflow.db, http://host:5000
    experiment: Optional[str] = None      # default: the study's name
    registered_model: Optional[str] = None  # register the winner's model under this name in MLflow's registry


@dataclass
class WandbSettings:
    """`hydra.sweeper.wandb`: log each finished search trial as a W&B run (pip install -e '.[wandb]')."""

    project: Optional[str] = None     # null: off
    entity: Optional[str] = None      # default: W&B's (your user)
    mode: Optional[str] = None        # online, offline (to `wandb sync` later) or disabled; default: W&B's
    dir: Optional[str] = None         # where W&B writes (its wandb/ folder); default: the sweep folder


@dataclass
class ConfirmSettings:
    """`hydra.sweeper.confirm`: retrain the top_k configurations with `seeds` further seeds; the best mean wins."""

    top_k: int = 0      # 0: off
    seeds: int = 2      # further seeds per configuration (model init, shuffling, dropout; the data split stays)


@dataclass
class SweeperSettings:
    """Knobs of samplers and pruners are keyed by name, so switching one never leaks the other's."""

    _target_: str = "hydra_plugins.keras_optuna_sweeper.keras_optuna_sweeper.KerasOptunaSweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])  # the hydra/sweeper/sampler group
    _recursive_: bool = False             # `_target_` blocks (sampler, pruner) reach us as config, made per worker
    study_name: Optional[str] = None      # null: a fresh study per run (conf/sweep.yaml names it after the sweep)
    storage: Optional[str] = None         # Optuna RDB URL, journal:PATH or grpc://HOST:PORT; default sqlite:///<sweep dir>/study.db
    n_trials: int = 20                    # the study's total of counted trials, over every command and machine
    n_workers: int = 1                    # worker processes of this command (capped at the cores and the trials left)
    max_trials_per_worker: int = 20       # then a fresh process takes over (keeps memory flat)
    batch_trials: int = 1                 # trials a worker trains at once as one program (plain dense nets of one structure)
    gpus_per_worker: int = 0              # local workers: each sees its own slice of the visible GPUs (0: the CPU)
    worker_init: Optional[str] = None     # function(task_config) each worker process runs once, first (".x.f": this package's)
    heartbeat_interval: int = 10          # seconds between a running trial's heartbeats (Optuna's RDB/journal heartbeat)
    grace_period: Optional[int] = 30      # a running trial with no heartbeat for this long is failed and its slot given back
    objectives: Optional[List[str]] = None  # metrics the task returns (null: `value`, or v0, v1, ... per direction)
    directions: Optional[List[str]] = None  # one per objective (null: minimize, hydra-optuna-sweeper's default)
    direction: Any = None                 # hydra-optuna-sweeper's key: minimize/maximize or a list; sets directions
    sampler: Any = MISSING                # a name (tpe random grid cmaes qmc nsgaii gp) or a `_target_` block
    seed: Optional[int] = 0               # sampler seed: the same seed gives the same sequence of params
    samplers: Dict[str, Dict[str, Any]] = field(default_factory=lambda: {
        "tpe": {"n_startup_trials": 10, "multivariate": False, "constant_liar": True},
        "random": {}, "grid": {}, "cmaes": {"n_startup_trials": 1},
        "qmc": {"qmc_type": "sobol", "scramble": True}})
    pruner: Any = "none"                  # none, median, hyperband, successive_halving, threshold, or a `_target_` block
    pruners: Dict[str, Dict[str, Any]] = field(default_factory=lambda: {
        "none": {},
        "median": {"n_startup_trials": 5, "n_warmup_steps": 0},
        "hyperband": {"min_resource": 1, "reduction_factor": 3},
        "successive_halving": {"min_resource": 1, "reduction_factor": 4},
        "threshold": {"lower": None, "upper": None, "n_warmup_steps": 0}})
    max_failures: int = 5                 # failed trials in one run before the sweep stops
    max_failure_rate: Optional[float] = None  # hydra-optuna-sweeper's: stop when this share of the run's trials failed
    n_jobs: Optional[int] = None          # hydra-optuna-sweeper's: taken as n_workers (processes, not threads)
    custom_search_space: Optional[str] = None  # function(cfg, trial) that suggests extra or conditional params
    params: Optional[Dict[str, Any]] = None  # key: search expression or fixed value
    search_space: Optional[Dict[str, Any]] = None  # hydra-optuna-sweeper's deprecated form of params (type, low, ...)
    test_overrides: List[str] = field(default_factory=list)  # added when the best trial is replayed once
    leaderboard_size: int = 10
    confirm: ConfirmSettings = field(default_factory=ConfirmSettings)  # top_k confirmed over more seeds
    mlflow: MlflowSettings = field(default_factory=MlflowSettings)  # mlflow.tracking_uri: each finished trial as an MLflow run
    wandb: WandbSettings = field(default_factory=WandbSettings)  # wandb.project: each finished trial as a W&B run

    def __post_init__(self) -> None:
        self.notes: List[str] = []  # differences in meaning from what a hydra-optuna-sweeper user wrote
        self._read_hos_keys()
        self._check_blocks()
        self._check_counts()

    def _read_hos_keys(self) -> None:
        """Nested blocks as dataclasses; hydra-optuna-sweeper's spellings (`direction`, `n_jobs`) as ours."""
        if isinstance(self.confirm, dict):
            self.confirm = ConfirmSettings(**self.confirm)
        if isinstance(self.mlflow, dict):
            self.mlflow = MlflowSettings(**self.mlflow)
        if isinstance(self.wandb, dict):
            self.wandb = WandbSettings(**self.wandb)
        if self.direction is not None:
            self.directions = [self.direction] if isinstance(self.direction, str) else list(self.direction)
        if self.directions is None:
            self.directions = ["minimize"] * len(self.objectives or [None])
            self.notes.append("no hydra.sweeper.direction: the task's value is minimized (hydra-optuna-sweeper's "
                              "default); set direction: maximize to maximize it")
        if self.objectives is None:
            n = len(self.directions)
            self.objectives = ["value"] if n == 1 else [f"v{i}" for i in range(n)]
        if self.n_jobs is not None:
            self.n_workers = self.n_jobs
            self.notes.append(f"hydra.sweeper.n_jobs={self.n_jobs}: worker processes of this command, each claiming "
                              f"trials as it finishes (hydra-optuna-sweeper: trials per batch of its launcher)")
        if self.sampler in (MISSING, None):
            self.sampler = "tpe"
        if isinstance(self.sampler, str) and self.sampler in SAMPLER_OPTIONS:
            self.sampler = {"_target_": f"optuna.samplers.{SAMPLER_OPTIONS[self.sampler][0]}"}  # motpe: tpe, noted
        if isinstance(self.sampler, dict):
            self.sampler = self._named(dict(self.sampler))
        if self.search_space:
            self.params = {**search_space_params(self.search_space), **(self.params or {})}
            self.notes.append("hydra.sweeper.search_space is deprecated (hydra-optuna-sweeper 1.2): read as params: "
                              + ", ".join(f"{k}: {v}" for k, v in search_space_params(self.search_space).items()))

    def _named(self, block: Dict[str, Any]) -> Any:
        """A sampler block of a class SAMPLER_OPTIONS names (or with no `_target_`: TPE, as in hydra-optuna-sweeper)
        as that sampler's name, its seed and fields moved to `seed` and `samplers.<name>`; other classes stay blocks."""
        target = block.pop("_target_", "optuna.samplers.TPESampler")
        cls = str(target).removeprefix("optuna.samplers.")
        if cls not in SAMPLER_NAMES:
            return {"_target_": target, **block}
        name = SAMPLER_NAMES[cls]
        seed = block.pop("seed", None)
        if seed is not None:
            self.seed = seed
        knobs = {k: v for k, v in block.items() if v is not None}
        if cls == "MOTPESampler":
            dropped = " (n_ehvi_candidates dropped)" if knobs.pop("n_ehvi_candidates", None) is not None else ""
            self.notes.append(f"sampler MOTPESampler runs as TPESampler, which replaced it in Optuna 4{dropped}")
        self.samplers = {**self.samplers, name: {**(self.samplers.get(name) or {}), **knobs}}
        return name

    def _check_blocks(self) -> None:
        if self.confirm.top_k < 0 or self.confirm.seeds < (1 if self.confirm.top_k else 0):
            raise UserError(f"hydra.sweeper.confirm: top_k={self.confirm.top_k}, seeds={self.confirm.seeds}; "
                            f"use top_k >= 1 and seeds >= 1 (top_k=0: off)")
        if self.max_failure_rate is not None and not 0.0 <= self.max_failure_rate <= 1.0:
            raise UserError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: use a share in [0, 1]")
        if isinstance(self.pruner, dict) and "_target_" not in self.pruner:
            raise UserError(f"hydra.sweeper.pruner={self.pruner}: give a pruner name or a block with _target_")
        name = self.study_name
        if name is not None and (name in ("", ".", "..") or any(c in name for c in "/\\") or not name.isprintable()):
            raise UserError(f"hydra.sweeper.study_name={name!r}: use one folder name (no / or \\, not . or ..); "
                            f"the sweep is written to outputs/sweeps/<study_name>/")

    def _check_counts(self) -> None:
        if isinstance(self.gpus_per_worker, bool) or not isinstance(self.gpus_per_worker, int) or self.gpus_per_worker < 0:
            raise UserError(f"hydra.sweeper.gpus_per_worker={self.gpus_per_worker!r}: use an integer >= 0 (0: the CPU)")
        for name in ("n_trials", "n_workers", "max_trials_per_worker", "batch_trials", "max_failures",
                     "heartbeat_interval", "leaderboard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                given = "n_jobs" if name == "n_workers" and self.n_jobs is not None else name  # HOS's name for it
                raise UserError(f"hydra.sweeper.{given}={value!r}: use an integer >= 1")
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            raise UserError(f"hydra.sweeper.grace_period={self.grace_period}: must be longer than "
                            f"heartbeat_interval={self.heartbeat_interval} (null: twice the interval)")
        if not self.objectives or len(self.objectives) != len(self.directions) or \
                not set(self.directions) <= {"maximize", "minimize"}:
            raise UserError(f"hydra.sweeper.objectives={list(self.objectives)} with directions="
                            f"{list(self.directions)}: give one direction (maximize or minimize) per objective")

    @property
    def sampler_name(self) -> str:
        """The sampler as a reader names it: `tpe`, or a block's class (`NSGAIISampler`)."""
        return self.sampler["_target_"].rsplit(".", 1)[-1] if isinstance(self.sampler, dict) else self.sampler

    @property
    def pruner_name(self) -> str:
        return self.pruner["_target_"].rsplit(".", 1)[-1] if isinstance(self.pruner, dict) else self.pruner

    @property
    def pruning(self) -> bool:
        """Whether trials report epochs to a pruner (Optuna cannot prune multi-objective studies)."""
        return self.pruner_name not in ("none", "NopPruner") and len(self.objectives) == 1

    @property
    def pruner_startup(self) -> int:
        """Trials that must complete before the pruner judges any (MedianPruner's and PercentilePruner's
        `n_startup_trials`, Optuna's default 5); 0 for the others, which judge from the first."""
        name = self.pruner_name
        if not self.pruning or name not in ("median", "MedianPruner", "PercentilePruner"):
            return 0
        kwargs = self.pruner if isinstance(self.pruner, dict) else self.pruners.get(name) or {}
        return int(kwargs.get("n_startup_trials", 5))

    @property
    def grace(self) -> int:
        """Seconds without a heartbeat after which a running trial is taken for dead (Optuna's default: 2x)."""
        return self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
