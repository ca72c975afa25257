"""keras-sweep: config-driven hyperparameter sweeps for Keras.

One code base under two names: `src` in a checkout, run from its root (`python -m src.train`), and `keras_sweep`
when installed (pyproject maps this folder to it, so the wheel ships no top-level `src` or `conf`). Modules
import each other relatively; the few places that name the package or its commands use the constants below.
"""
from pathlib import Path

PACKAGE = __name__  # "src" or "keras_sweep"
_HERE = Path(__file__).resolve().parent
# Hydra's config folder: `conf/` beside this folder in a checkout, inside the package when installed
CONFIG_DIR = str(_HERE / "conf" if (_HERE / "conf").is_dir() else _HERE.parent / "conf")
TRAIN_CONFIG = "config"  # the primary config of the train command (a sweep's replay line composes it)


def command(name: str) -> str:
    """How a user runs one of the commands (train, sweep, analyze, bench) of the running copy."""
    return f"python -m src.{name}" if PACKAGE == "src" else f"keras-sweep {name}"
