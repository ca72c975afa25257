"""The Hydra plugins of keras-sweep: the `keras_optuna` sweeper and the `dask` launcher."""
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def ours(module: str) -> ModuleType:
    """This project's `module` (e.g. "sweep.settings") under the name the running command uses: `src` in a
    checkout run from its root, `keras_sweep` when installed (the same files: pyproject's package-dir). Never
    both in one process: each would have its own classes."""
    return importlib.import_module(f"{_package()}.{module}")


def _package() -> str:
    if "keras_sweep" in sys.modules:
        return "keras_sweep"
    checkout = Path(__file__).resolve().parents[2] / "src"
    spec = importlib.util.find_spec("src")  # maybe another project's `src`: compared by place, not imported
    if spec is not None and spec.origin is not None and Path(spec.origin).resolve().parent == checkout:
        return "src"
    return "keras_sweep"
