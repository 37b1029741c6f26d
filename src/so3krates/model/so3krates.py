"""The SO3krates Euclidean transformer (Frank et al., Nat. Commun. 2024).

Per-atom invariant features ``x`` (N, F) and Euclidean variables ``chi`` (N, D), D = sum(2l+1)
over the degrees in L, interact through cutoff-weighted attention (no softmax). The module maps
a padded graph to per-atom energy contributions; ``so3krates.potential`` turns those into total
energies (float64) and forces.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from so3krates.model.basis import (
    cutoff_function,
    degree_index,
    radial_basis,
    spherical_harmonics,
)


def degree_contraction_matrix(degrees: Sequence[int]) -> np.ndarray:
    """(D, |L|) matrix M with ``(chi**2) @ M = C(chi)``, C_l = sum_m chi_lm^2 / sqrt(2l+1)."""
    idx = degree_index(degrees)
    m = np.zeros((len(idx), len(degrees)))
    m[np.arange(len(idx)), idx] = 1.0 / np.sqrt(2 * np.asarray(degrees)[idx] + 1)
    return m


class BranchMLP(nn.Module):
    """``n`` independent two-layer MLPs (Dense-SiLU-Dense) on the same input, evaluated at once.

    (P, in) -> (P, n, out). Fusing the branches into one matmul per layer keeps them
    independent (block-diagonal second layer) while halving the number of kernel launches.
    """

    n: int
    hidden: int
    out: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
        h = nn.Dense(self.n * self.hidden, dtype=self.dtype, param_dtype=self.dtype)(h)
        h = nn.silu(h).reshape(h.shape[:-1] + (self.n, self.hidden))
        w = self.param(
            "kernel_2",
            nn.initializers.lecun_normal(batch_axis=(0,)),
            (self.n, self.hidden, self.out),
            self.dtype,
        )
        b = self.param("bias_2", nn.initializers.zeros, (self.n, self.out), self.dtype)
        return jnp.einsum("...nh,nho->...no", h, w) + b


class HeadLinear(nn.Module):
    """Per-head (block-diagonal) linear map: (N, H*d) -> (N, H, d), no bias."""

    heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        d = x.shape[-1] // self.heads
        w = self.param(
            "kernel", nn.initializers.lecun_normal(batch_axis=(0,)), (self.heads, d, d), self.dtype
        )
        return jnp.einsum("nhf,hfg->nhg", x.reshape(x.shape[0], self.heads, d), w)


class ResidualMLP(nn.Module):
    """x + Dense(SiLU(Dense(x))), optionally preceded by a LayerNorm."""

    layer_norm: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        h = nn.LayerNorm(dtype=self.dtype, param_dtype=self.dtype)(x) if self.layer_norm else x
        h = nn.silu(nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=self.dtype)(h))
        return x + nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=self.dtype)(h)


class EuclideanAttention(nn.Module):
    """One SO3krates transformer block: filters, two attention branches, updates.

    Args of ``__call__`` (P pairs, N atoms, K radial functions, D EV components):
        x (N, F), chi (N, D), rbf (P, K), ylm (P, D), cut (P,) cutoff weights (0 for padding),
        centers (P,) atom i, neighbors (P,) atom j.
    """

    num_heads: int
    degrees: Sequence[int]
    layer_norm: bool = False
    residual_mlp: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, chi, rbf, ylm, cut, centers, neighbors):
        n_atoms, f = x.shape
        n_deg = len(self.degrees)
        contract = jnp.asarray(degree_contraction_matrix(self.degrees), self.dtype)
        deg_idx = degree_index(self.degrees)

        # Two filters (branch 0: invariant attention, branch 1: EV attention), each the sum of
        # a radial MLP and an MLP of the per-degree invariants of chi_j - chi_i.
        dchi = chi[neighbors] - chi[centers]
        w = BranchMLP(2, f, f, dtype=self.dtype, name="radial_filter")(rbf)
        w = w + BranchMLP(2, max(f // 4, 1), f, dtype=self.dtype, name="ev_filter")(
            (dchi * dchi) @ contract
        )

        def attention(heads: int, w_branch: jnp.ndarray, name: str) -> jnp.ndarray:
            q = nn.silu(HeadLinear(heads, self.dtype, name=f"{name}_query")(x))
            k = nn.silu(HeadLinear(heads, self.dtype, name=f"{name}_key")(x))
            d = f // heads
            w_branch = w_branch.reshape(-1, heads, d)
            alpha = jnp.sum(q[centers] * w_branch * k[neighbors], axis=-1)
            return alpha * (cut[:, None] / np.sqrt(d)).astype(self.dtype)  # (P, heads)

        # Invariant branch: H heads of width F/H.
        alpha_x = attention(self.num_heads, w[:, 0], "inv")
        v = HeadLinear(self.num_heads, self.dtype, name="inv_value")(x)
        msg = (alpha_x[..., None] * v[neighbors]).reshape(-1, f)
        dx = jax.ops.segment_sum(msg, centers, num_segments=n_atoms)

        # EV branch: one head per degree, width F/|L|; messages are alpha * Y^l(r_ij).
        alpha_chi = attention(n_deg, w[:, 1], "ev")
        dchi = jax.ops.segment_sum(alpha_chi[:, deg_idx] * ylm, centers, num_segments=n_atoms)

        x = x + dx
        chi = chi + dchi
        if self.layer_norm:
            x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.dtype)(x)
        if self.residual_mlp:
            x = ResidualMLP(dtype=self.dtype)(x)
        return x, chi


class Exchange(nn.Module):
    """Exchange block: ``[x, C(chi)] -> (a, b)``; ``x += a``, ``chi_l += b_l chi_l``."""

    degrees: Sequence[int]
    layer_norm: bool = False
    residual_mlp: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, chi):
        f = x.shape[-1]
        contract = jnp.asarray(degree_contraction_matrix(self.degrees), self.dtype)
        h = jnp.concatenate([x, (chi * chi) @ contract], axis=-1)
        ab = nn.Dense(f + len(self.degrees), dtype=self.dtype, param_dtype=self.dtype)(h)
        a, b = ab[:, :f], ab[:, f:]
        x = x + a
        chi = chi + b[:, degree_index(self.degrees)] * chi
        if self.layer_norm:
            x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.dtype)(x)
        if self.residual_mlp:
            x = ResidualMLP(dtype=self.dtype)(x)
        return x, chi


class So3krates(nn.Module):
    """SO3krates: padded graph -> per-atom energy contributions (N,) in eV (without e_Z).

    ``E_i = s_Z * MLP_out(x_i) + b_Z``; the float64 per-element reference energies e_Z are
    added outside the network (``so3krates.potential``), so that float32 models still resolve
    meV on totals of 10^4 eV.
    """

    features: int = 128
    num_layers: int = 3
    num_heads: int = 4
    degrees: Sequence[int] = (1, 2, 3, 4)
    cutoff: float = 5.0
    num_radial: int = 32
    radial_basis: str = "bernstein"
    cutoff_fn: str = "cosine"
    layer_norm: bool = False
    residual_mlp: bool = True
    energy_scale: float = 1.0
    num_elements: int = 119
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, numbers, vectors, centers, neighbors, pair_mask):
        """numbers (N,), vectors r_ij (P, 3) in Å, centers/neighbors (P,), pair_mask (P,)."""
        if self.features % self.num_heads or self.features % len(self.degrees):
            raise ValueError("features must be divisible by num_heads and by len(degrees)")
        vectors = vectors.astype(self.dtype)
        # Padding pairs get a harmless unit-length vector so that no NaN reaches a gradient.
        safe = jnp.where(pair_mask[:, None], vectors, jnp.ones_like(vectors))
        d = jnp.sqrt(jnp.sum(safe * safe, axis=-1))
        cut = cutoff_function(self.cutoff_fn, d, self.cutoff) * pair_mask
        rbf = radial_basis(self.radial_basis, d, self.num_radial, self.cutoff).astype(self.dtype)
        ylm = spherical_harmonics(safe / d[:, None], self.degrees).astype(self.dtype)

        x = nn.Embed(self.num_elements, self.features, dtype=self.dtype, param_dtype=self.dtype)(
            numbers
        )
        chi = jnp.zeros((numbers.shape[0], ylm.shape[-1]), self.dtype)
        for t in range(self.num_layers):
            x, chi = EuclideanAttention(
                self.num_heads, self.degrees, self.layer_norm, self.residual_mlp, self.dtype,
                name=f"attention_{t}",
            )(x, chi, rbf, ylm, cut, centers, neighbors)
            x, chi = Exchange(
                self.degrees, self.layer_norm, self.residual_mlp, self.dtype, name=f"exchange_{t}"
            )(x, chi)

        h = nn.silu(nn.Dense(self.features, dtype=self.dtype, param_dtype=self.dtype)(x))
        out = nn.Dense(1, dtype=self.dtype, param_dtype=self.dtype)(h)[:, 0]
        scale = self.param(
            "element_scale",
            nn.initializers.constant(self.energy_scale),
            (self.num_elements,),
            self.dtype,
        )
        shift = self.param("element_shift", nn.initializers.zeros, (self.num_elements,), self.dtype)
        return scale[numbers] * out + shift[numbers]
