"""``jit``: ``jax.jit`` with the package's XLA compile options (and ``materialize``, a fusion
barrier).

XLA:CPU in jaxlib 0.10 hands dots and some reductions to YNNPACK ("library fusions") by
default. Inside the scanned loop over pair chunks that systems of more than a few hundred
pairs use, that made energy + forces of 1,008 atoms (48 aspirin molecules, reference model)
take 70 ms instead of 50 ms on 2 CPU cores, measured side by side in one process; aspirin
alone and training steps of 2 aspirins did not change beyond noise. So the package's jitted
functions compile without them, where the installed XLA knows the option and the backend is
the CPU.

They also ask LLVM for 512-bit vectors where the CPU has them (XLA prefers 256 bits): on the
AVX-512 development machine one aspirin's energy + forces took 1.58 instead of 1.69 ms on one
core, 1,008 atoms 38.9 instead of 41.1 ms (two threads), a training step of 2 aspirins 11.3
instead of 11.6 ms (one core; variants interleaved in one process). A CPU without AVX-512
keeps its widest vectors.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "",  # an empty list of library fusion types: none
    "xla_cpu_prefer_vector_width": 512,
}


@functools.cache
def compiler_options() -> dict[str, Any]:
    """The compile options for this process's default backend ({} where there are none): those
    of :data:`CPU_COMPILER_OPTIONS` that the installed XLA accepts, on the CPU."""
    if jax.default_backend() != "cpu":
        return {}
    accepted = {}
    for key, value in CPU_COMPILER_OPTIONS.items():
        try:  # an XLA that does not know an option rejects it at compile time
            jax.jit(lambda x: x + 1, compiler_options={key: value})(0.0)
        except Exception:  # noqa: BLE001 - any rejection means: XLA's default for this one
            continue
        accepted[key] = value
    return accepted


def _tracing(args: tuple, kwargs: dict) -> bool:
    """Whether JAX is tracing (inside jit, grad, vmap, ...) or the arguments are tracers.

    JAX's own trace state answers in ~0.3 us; flattening the arguments to look for tracers
    (the fallback where that private function is missing) cost ~9 us per call of a jitted
    prediction, about 1 % of one aspirin's energy + forces."""
    if _trace_state_clean is not None:
        return not _trace_state_clean()
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs)))


try:
    from jax._src.core import trace_state_clean as _trace_state_clean
except ImportError:  # pragma: no cover - another JAX: the slower check
    _trace_state_clean = None


class _Jitted:
    """``jax.jit(fun, ...)`` made at the first call or attribute access, so that defining a
    jitted function (e.g. at import) neither starts a backend nor compiles anything.

    JAX accepts compile options on outermost jits only: called while being traced (inside a
    user's ``jax.jit``, ``vmap``, ``grad``), it is a plain ``jax.jit`` of ``fun``.
    """

    def __init__(self, fun: Callable, kwargs: dict):
        self._fun, self._kwargs = fun, kwargs
        self._jitted: Callable | None = None
        self._nested: Callable | None = None
        functools.update_wrapper(self, fun)

    def _get(self) -> Callable:
        if self._jitted is None:
            self._jitted = jax.jit(self._fun, compiler_options=compiler_options(), **self._kwargs)
        return self._jitted

    def __call__(self, *args, **kwargs):
        if _tracing(args, kwargs):
            if self._nested is None:
                self._nested = jax.jit(self._fun, **self._kwargs)
            return self._nested(*args, **kwargs)
        return self._get()(*args, **kwargs)

    def __getattr__(self, name: str):  # lower, eval_shape, _cache_size, ...
        return getattr(self._get(), name)


def jit(fun: Callable | None = None, **kwargs) -> Callable:
    """``jax.jit(fun, **kwargs)`` with :func:`compiler_options`; usable as a decorator, with
    or without arguments (``@jit``, ``@jit(static_argnames=...)``)."""
    if fun is None:
        return functools.partial(jit, **kwargs)
    return _Jitted(fun, kwargs)


CACHE_ENV = "SO3KRATES_COMPILATION_CACHE"
CACHE_MAX_BYTES = 2 * 1024**3


def cache_root() -> Path:
    """The package's cache directory: ``$SO3KRATES_CACHE``, else ``~/.cache/so3krates``."""
    return Path(os.environ.get("SO3KRATES_CACHE") or Path.home() / ".cache" / "so3krates")


def default_cache_directory() -> Path | None:
    """Where :func:`use_compilation_cache` keeps compiled programs:
    ``$SO3KRATES_COMPILATION_CACHE`` (``off``: nowhere), else ``jax`` in :func:`cache_root`."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "0", "off", "false", "no") else Path(value)
    return cache_root() / "jax"


def use_compilation_cache(directory: str | os.PathLike | None = None) -> Path | None:
    """Keep XLA's compiled programs on disk (JAX's persistent compilation cache), so that the
    next process compiles the same model in a fraction of the time: on the 2-core
    development machine a 100-step training of a small model took 24 s the first time and
    7 s the second. ``directory``: default :func:`default_cache_directory`; a
    ``JAX_COMPILATION_CACHE_DIR`` set by the user wins. Returns the directory in use (None:
    no cache, also where it cannot be created). The cache is bounded where ``filelock`` is
    installed (2 GiB, least recently used entries go first); XLA refuses entries compiled for
    another CPU and recompiles.
    """
    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    path = Path(directory) if directory is not None else default_cache_directory()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if importlib.util.find_spec("filelock") is not None:  # JAX bounds the cache with it
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    return path


# XLA:CPU flags for one compute thread (no Eigen thread pool, one intra-op thread).
SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def backends_started() -> bool:
    """Whether JAX has started its backends (after which XLA flags and device counts are fixed)."""
    try:  # private, but the only way to ask; an unknown JAX is assumed not started
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # noqa: BLE001
        return False


def use_one_cpu_thread(core: int | None = None) -> None:
    """Make XLA:CPU compute on one thread in this process; with ``core``, pin the process to
    that CPU core as well.

    Small systems give a thread pool too little work: on the 2-core development machine one
    aspirin MD step took 1.38-1.52 ms with XLA's defaults, the same on one thread, and
    1.14-1.31 ms on one thread pinned to one core (or with the process pinned: XLA then runs
    all its threads on that core). XLA reads its flags when JAX starts its backends, so this
    must run before JAX's first computation (and pins only threads started afterwards);
    later it raises RuntimeError instead of silently doing nothing. Other backends ignore the
    flags.
    """
    if backends_started():
        raise RuntimeError("use_one_cpu_thread() must run before JAX's first computation")
    if core is not None:
        allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        if core not in allowed:
            raise ValueError(f"CPU core {core} is not available to this process "
                             f"(available: {sorted(allowed) or 'none known'})")
        os.sched_setaffinity(0, {core})
    flags = os.environ.get("XLA_FLAGS", "")
    if SINGLE_THREAD_XLA_FLAGS not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {SINGLE_THREAD_XLA_FLAGS}".strip()


def materialize(a: jnp.ndarray) -> jnp.ndarray:
    """Identity on (P, ...) arrays that XLA cannot fuse into its consumers.

    XLA:CPU otherwise re-evaluates cheap-looking producers (e.g. the cosine of the cutoff, or
    a gather's indices) inside every kernel they feed, once per element, forward and backward.
    An identity scatter is opaque to fusion (``optimization_barrier`` is stripped before
    fusion on CPU).
    """
    idx = jnp.arange(a.shape[0])
    return jnp.zeros_like(a).at[idx].set(a, indices_are_sorted=True, unique_indices=True)
