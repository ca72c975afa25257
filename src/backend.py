"""Choose Keras's backend (tensorflow, or jax as an extra) before Keras is first imported."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

from .errors import UserError

BACKENDS = ("tensorflow", "jax")
CACHE_BYTES = 2**30  # JAX's compilation cache


def use_backend(name: str) -> None:
    """Set KERAS_BACKEND for this process; a process that already runs Keras cannot switch."""
    if name not in BACKENDS:
        raise UserError(f"trainer.backend={name!r}; allowed: {', '.join(BACKENDS)}")
    if "keras" in sys.modules:
        current = sys.modules["keras"].backend.backend()
        if current != name:
            raise UserError(f"trainer.backend={name}: this process already runs Keras on {current}; "
                            f"one process (one sweep worker) uses one backend")
        return
    if name == "jax":
        try:
            import jax
        except ImportError:
            raise UserError("trainer.backend=jax needs JAX: pip install -e '.[jax]'") from None
        cache_compilations(jax)
    os.environ["KERAS_BACKEND"] = name


def cache_compilations(jax: Any) -> None:
    """JAX's persistent compilation cache, in the user's cache folder (at most 1 GB, least recently used out):
    a program XLA compiled once (~1 s) loads from it in every later worker process and sweep on this machine.
    JAX's own settings win (JAX_COMPILATION_CACHE_DIR, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS,
    JAX_ENABLE_COMPILATION_CACHE=false)."""
    if jax.config.jax_compilation_cache_dir is not None:
        return
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    jax.config.update("jax_compilation_cache_dir", str(home / "keras_sweep" / "jax"))
    jax.config.update("jax_compilation_cache_max_size", CACHE_BYTES)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)  # JAX's 1 s would skip a sweep's programs


def keep_tensorflow_unloaded() -> None:
    """On Keras's JAX backend, keep Keras from importing TensorFlow (seconds and hundreds of MB per worker) only to
    ask whether an object it saves is a TensorFlow one (`serialize_keras_object`): a process that never loaded
    TensorFlow holds none. Sets Keras's private `LazyModule` answer; TensorFlow still loads if something uses it."""
    import keras

    if keras.backend.backend() != "jax" or "tensorflow" in sys.modules:
        return
    from keras.src.utils import module_utils

    module_utils.tensorflow._available = False  # noqa: SLF001 - Keras has no public switch for it


def load_keras() -> ModuleType:
    """Import Keras (and so TensorFlow or JAX), once per process: TensorFlow's start-up lines silenced, and
    without the optional libraries Keras and TensorFlow import at start-up only in case: matplotlib, for
    `keras.visualization` (0.4-0.6 s per worker, and a font cache built on a machine's first run), and, on the
    TensorFlow backend, JAX, for TensorFlow Lite's converter (~0.5 s). No trial uses them; later imports work."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ chatter, CUDA probing included
    optional = ["matplotlib", *(["jax"] if os.environ.get("KERAS_BACKEND") == "tensorflow" else [])]
    skipped = [name for name in optional if name not in sys.modules]
    for name in skipped:
        sys.modules[name] = None  # type: ignore[assignment]  # their `try: import ...` fails, as if not installed
    try:
        with quiet_native_start():
            import keras
    finally:
        for name in skipped:
            if sys.modules.get(name, ...) is None:
                del sys.modules[name]
    return keras


@contextmanager
def quiet_native_start() -> Iterator[None]:
    """Silence what native code writes to stderr during the block: TensorFlow's start-up lines (absl logs
    written before its logging is set up, which TF_CPP_MIN_LOG_LEVEL does not reach). Python errors still
    raise; what Python itself would print goes to the same place, so keep the block to an import."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
