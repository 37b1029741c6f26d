"""Building blocks of the network: full-precision matmuls, dense layers that can run their
backward pass on stored transposed kernels (inference), and block-diagonal kernels."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# float32 matmuls in full float32. JAX's default lets GPUs multiply float32 in TensorFloat-32
# (10-bit mantissa): on an H100 that moved a float32 model's forces by up to 2.5e-3 eV/Å and
# an ethanol energy by 3 meV from its float64 values. Force fields need those digits.
MATMUL_PRECISION = "highest"


def full_precision_matmuls(fun):
    """``fun`` with every matmul it traces at :data:`MATMUL_PRECISION` (outermost decorator
    but ``nn.compact``)."""

    @functools.wraps(fun)
    def wrapped(*args, **kwargs):
        with jax.default_matmul_precision(MATMUL_PRECISION):
            return fun(*args, **kwargs)

    return wrapped


def block_diagonal(w: jnp.ndarray) -> jnp.ndarray:
    """Per-head blocks (M, H, d, d) of M linear maps -> (H d, M H d): their block-diagonal
    matrices side by side (so that all M maps are one matmul)."""
    m, h, d, _ = w.shape
    eye = jnp.eye(h, dtype=w.dtype)
    return jnp.einsum("mhab,hk->hamkb", w, eye).reshape(h * d, m * h * d)


@jax.custom_vjp
def matmul_with_transpose(x: jnp.ndarray, w: jnp.ndarray, w_t: jnp.ndarray) -> jnp.ndarray:
    """``x @ w`` whose gradient in ``x`` is ``g @ w_t`` with ``w_t`` = ``w.T`` stored as such.

    XLA:CPU multiplies by a transposed operand several times slower than by a plain one
    (24 x 640 by 640 x 128: 0.10 vs 0.04 ms on the development machine), and a gradient
    in ``x`` needs ``w`` transposed. For fixed weights (inference) the transpose is stored.
    """
    return x @ w


def _matmul_with_transpose_fwd(x, w, w_t):
    return x @ w, (x, w_t)


@full_precision_matmuls  # traced apart from the forward pass, outside its context
def _matmul_with_transpose_bwd(res, g):
    x, w_t = res
    return g @ w_t, x.T @ g, None  # the weight's gradient goes to ``w`` (``w_t`` is a copy)


matmul_with_transpose.defvjp(_matmul_with_transpose_fwd, _matmul_with_transpose_bwd)


def zero_unless(skip: jnp.ndarray, fn: Callable, *args, fixed: tuple = ()):
    """``fn(*args, *fixed)``, or zeros shaped like it if ``skip`` (a scalar bool), where the
    backward pass recomputes ``fn`` (only if not skipped) instead of keeping residuals.

    A plain ``lax.cond`` keeps the residuals of its untaken branch as zero-filled buffers,
    and ``jax.checkpoint`` around the branch makes its inputs residuals, copied out of the
    cond, constants included (a spline table: megabytes). Here the residuals are the inputs
    themselves. ``fn`` must not close over traced values (pass them in ``args`` or
    ``fixed``); ``fixed`` (e.g. parameters of a model being evaluated) and integer or boolean
    ``args`` get no gradient.
    """
    leaves, tree = jax.tree.flatten(args)
    wants_grad = [jnp.issubdtype(x.dtype, jnp.inexact) for x in leaves]

    def apply(leaves, fixed):
        return fn(*tree.unflatten(leaves), *fixed)

    def call(skip, leaves, fixed):
        shapes = jax.eval_shape(apply, leaves, fixed)
        zeros = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        return jax.lax.cond(skip, zeros, lambda: apply(leaves, fixed))

    def bwd(res, g):
        skip, leaves, fixed = res
        floats = [x for x, d in zip(leaves, wants_grad) if d]

        def of_floats(*xs):
            it = iter(xs)
            return apply([next(it) if d else x for x, d in zip(leaves, wants_grad)], fixed)

        grads = iter(jax.lax.cond(skip, lambda: [jnp.zeros_like(x) for x in floats],
                                  lambda: list(jax.vjp(of_floats, *floats)[1](g))))
        return None, [next(grads) if d else None for d in wants_grad], None

    wrapped = jax.custom_vjp(call)
    wrapped.defvjp(lambda *primals: (call(*primals), primals), bwd)
    return wrapped(skip, leaves, fixed)


def derived_param(module: nn.Module, name: str) -> jnp.ndarray:
    """A parameter that ``so3krates.model.inference_params`` derives from the network's (inference)."""
    value = module.get_variable("params", name)
    if value is None:
        raise ValueError(f"{module.name or type(module).__name__}: no parameter {name!r}; a "
                         "module with radial_knots > 0 reads parameters derived from the "
                         "network's: pass so3krates.model.inference_params(module, params)")
    return value


class Dense(nn.Module):
    """``x @ kernel + bias`` (parameters as in ``flax.linen.Dense``); with ``transposed`` the
    kernel's transpose is a parameter ``kernel_t`` as well (inference, see
    :func:`matmul_with_transpose` and ``so3krates.model.inference_params``)."""

    features: int
    dtype: Any = jnp.float32
    transposed: bool = False
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                            self.dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.dtype)
        if self.transposed:
            return matmul_with_transpose(x, kernel, derived_param(self, "kernel_t")) + bias
        return x @ kernel + bias


class ResidualMLP(nn.Module):
    """x + Dense(SiLU(Dense(x))), optionally preceded by a LayerNorm."""

    layer_norm: bool = False
    dtype: Any = jnp.float32
    transposed: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        h = nn.LayerNorm(dtype=self.dtype, param_dtype=self.dtype)(x) if self.layer_norm else x
        h = nn.silu(Dense(x.shape[-1], self.dtype, self.transposed)(h))
        return x + Dense(x.shape[-1], self.dtype, self.transposed)(h)


def with_transposed_kernels(tree: dict) -> dict:
    """A copy of a parameter tree in which every ``Dense`` (a dict with a 2-D ``kernel`` and a
    ``bias``) also holds ``kernel_t``."""
    out = {k: with_transposed_kernels(v) if isinstance(v, dict) else v for k, v in tree.items()}
    if "bias" in tree and getattr(tree.get("kernel"), "ndim", 0) == 2:
        out["kernel_t"] = tree["kernel"].T
    return out
