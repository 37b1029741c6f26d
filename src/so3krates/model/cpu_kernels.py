"""Fused CPU kernels (C++, XLA FFI) for the pair attention of inference models.

On the CPU, a small system's energy + forces is bound by XLA:CPU running one (P, F)-sized
kernel after another (gathers, products, head sums, scatter-adds, and their transposes in
the backward pass), each a pass over memory. ``kernels/pair_attention.cc`` computes one
block's messages, and their gradients, pair by pair instead. It is compiled on first use with
the system's C++ compiler (``$CXX``, else ``g++``) for this CPU (``-march=native``) into a
cache directory (``$SO3KRATES_CACHE``, else ``~/.cache/so3krates``), keyed by the source, the
flags, the compiler, JAX's version and the CPU, and written atomically (concurrent processes
may race; one wins, none reads a partial file).

Without a compiler, or with ``SO3KRATES_CPU_KERNELS=0``, or on other backends, the model
runs its pure-JAX path (the reference these kernels are tested against), with a warning
where a build failed. Only reverse-mode differentiation is defined (forces, stress), like the
rest of an inference model (``radial_knots`` > 0); a model's predictions take their
forward-mode derivatives from the exact network (``so3krates.potential.with_exact_tangents``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from so3krates.compile import cache_root

SOURCE = Path(__file__).with_name("kernels") / "pair_attention.cc"
# Reassociation lets GCC reduce head sums in a tree (an in-order sum of 16 lanes took a
# third of the backward pass's time); no other fast-math assumption (NaNs, infinities).
CXX_FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fassociative-math", "-fno-signed-zeros",
             "-fno-trapping-math", "-std=c++17", "-shared", "-fPIC")
_TARGETS = {  # FFI target name -> exported handler symbol
    f"so3krates_pair_attention_{kind}_{dt}": f"PairAttention{kind.title()}{dt.upper()}"
    for kind in ("forward", "backward") for dt in ("f32", "f64")
}


def _cache_dir() -> Path:
    return cache_root() / "kernels"


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "g++"))


def library_path(compiler: str) -> Path:
    """Where the compiled kernels for this source, compiler, JAX and CPU are cached."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             check=False).stdout
    key = "\n".join([SOURCE.read_text(), " ".join(CXX_FLAGS), version, jax.__version__,
                     _cpu_signature()])
    return _cache_dir() / f"pair_attention-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def build(compiler: str) -> Path:
    """Compile the kernels (unless cached) and return the shared library's path."""
    path = library_path(compiler)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        cmd = [compiler, *CXX_FLAGS, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, path)  # atomic: a concurrent build or reader sees all or nothing
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@functools.cache
def available() -> bool:
    """True if the kernels are built, loaded and registered with XLA:CPU (once per process)."""
    if os.environ.get("SO3KRATES_CPU_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    compiler = _compiler()
    if compiler is None:
        warnings.warn("so3krates: no C++ compiler found ($CXX or g++): the fused CPU kernels are "
                      "not built and inference runs the slower pure-JAX path", stacklevel=2)
        return False
    try:
        lib = ctypes.cdll.LoadLibrary(str(build(compiler)))
        for name, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")
    except Exception as err:  # noqa: BLE001 - any failure: fall back, but say why
        warnings.warn(f"so3krates: the fused CPU kernels are unavailable ({err}); inference "
                      "runs the slower pure-JAX path", stacklevel=2)
        return False
    return True


def enabled() -> bool:
    """Whether models traced now use the kernels: built, and JAX's default backend is the CPU."""
    return jax.default_backend() == "cpu" and available()


def _dtype_name(dtype) -> str:
    name = jnp.dtype(dtype).name
    if name not in ("float32", "float64"):
        raise TypeError(f"pair attention kernels take float32 or float64, not {name}")
    return "f32" if name == "float32" else "f64"


@functools.cache
def _pair_attention(heads: tuple[int, int], scales: tuple[float, float], halves: bool,
                    qkv_grad: bool):
    attrs = dict(heads0=np.int64(heads[0]), heads1=np.int64(heads[1]),
                 scale0=np.float64(scales[0]), scale1=np.float64(scales[1]), halves=halves)

    def forward(qkv, ev_w, table, s, cut, ylm, centers, neighbours, component_degree):
        dt, n_heads = qkv.dtype, heads[0] + heads[1]
        out = (jax.ShapeDtypeStruct((qkv.shape[0], ev_w.shape[-1] + ylm.shape[1]), dt),
               jax.ShapeDtypeStruct((cut.shape[0], n_heads), dt))
        call = jax.ffi.ffi_call(f"so3krates_pair_attention_forward_{_dtype_name(dt)}",
                                out, vmap_method="sequential")
        return call(qkv, ev_w, table, s, cut, ylm, centers, neighbours, component_degree, **attrs)

    @jax.custom_vjp
    def attention(*args):
        return forward(*args)[0]

    def fwd(*args):
        upd, raw = forward(*args)
        return upd, (args, raw)

    def bwd(res, g):
        args, raw = res
        qkv, ev_w, table, s, cut, ylm = args[:6]
        shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (qkv, ev_w, s, cut, ylm)]
        if not qkv_grad:  # the kernel skips it: an empty result
            shapes[0] = jax.ShapeDtypeStruct((0, qkv.shape[1]), qkv.dtype)
        call = jax.ffi.ffi_call(f"so3krates_pair_attention_backward_{_dtype_name(qkv.dtype)}",
                                shapes, vmap_method="sequential")
        g_qkv, g_ev, g_s, g_cut, g_ylm = call(*args, raw, g.astype(qkv.dtype), **attrs,
                                              qkv_grad=qkv_grad)
        # No gradient in the spline table: inference models hold their parameters fixed.
        return g_qkv if qkv_grad else None, g_ev, None, g_s, g_cut, g_ylm, None, None, None

    attention.defvjp(fwd, bwd)
    return attention


def pair_attention(qkv, ev_w, table, s, cut, ylm, centers, neighbours, component_degree,
                   heads: Sequence[int], scales: Sequence[float], halves: bool = False,
                   qkv_grad: bool = True) -> jnp.ndarray:
    """One block's messages summed per center atom, (N, F + D), by the fused CPU kernel.

    Args (N atoms, P pairs, F features, D EV components):
        qkv: (N, 5F) per atom [q0 | k0 | v | q1 | k1], queries and keys activated.
        ev_w: (R, 2, F) both branches' filters but their radial parts; pair p uses row
            p % R (1: the same for every pair).
        table: (K, 4, 2, F) the radial filters' spline table, s: (P,) the pairs' spline
            coordinates (``so3krates.model.radial_table``).
        cut: (P,) cutoff weights (0: no message); ylm: (P, D) spherical harmonics.
        centers, neighbours: (P,) int32; component_degree: (D,) int32, the EV-branch head of
            each EV component.
        heads: (H0, H1) heads of both branches; scales: their attention scales.
        halves: the pairs are in the halves layout (``so3krates.neighbours.pairs``: pair P/2 + k
            the reverse of pair k): each couple's filters are evaluated once (R must divide
            P/2), and the gradient in s goes to the couple's first pair.
        qkv_grad: False if qkv is held fixed (the first block's per-element lookup): its
            gradient is zero then and not computed, about half of the backward pass.

    Returns what ``so3krates.model.so3krates.pair_messages`` returns for the filters
    ``evaluate_table(table, s) + ev_w[p % R]``, to rounding; differentiable in reverse mode
    in qkv, ev_w, s, cut and ylm (the table is held fixed).
    """
    if not available():
        raise RuntimeError("the fused CPU kernels are unavailable (see the warning above)")
    if cut.shape[0] == 0:  # no pairs (e.g. a single atom): no messages
        return jnp.zeros((qkv.shape[0], ev_w.shape[-1] + ylm.shape[1]), qkv.dtype)
    rows = cut.shape[0] // 2 if halves else cut.shape[0]
    if (halves and cut.shape[0] % 2) or rows % ev_w.shape[0]:
        raise ValueError(f"{ev_w.shape[0]} filter rows do not divide {rows} pairs")
    fn = _pair_attention(tuple(int(h) for h in heads), tuple(float(x) for x in scales),
                         bool(halves), bool(qkv_grad))
    dt = qkv.dtype
    as_int = lambda a: jnp.asarray(a, jnp.int32)  # noqa: E731
    return fn(qkv, ev_w.astype(dt), table.astype(dt), s.astype(dt), cut.astype(dt),
              ylm.astype(dt), as_int(centers), as_int(neighbours), as_int(component_degree))


__all__ = ["available", "build", "enabled", "library_path", "pair_attention"]
