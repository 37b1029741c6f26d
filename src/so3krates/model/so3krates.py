"""The SO3krates Euclidean transformer (Frank et al., Nat. Commun. 2024).

Per-atom invariant features ``x`` (N, F) and Euclidean variables ``chi`` (N, D), D = sum(2l+1)
over the degrees in L, interact through cutoff-weighted attention (no softmax). The module maps
a padded graph to per-atom energy contributions; ``so3krates.potential`` turns those into total
energies (float64) and forces.

Performance notes (XLA:CPU, where small systems are bound by the number and the per-element
cost of (P, F) kernels, and large ones by memory traffic):

- the pair geometry (radial basis, cutoff, spherical harmonics) is computed once for all blocks;
- the radial filters MLP_r(phi(d_ij)) of all blocks are evaluated for one pair of each couple
  (i, j) / (j, i) only (their distances are bitwise equal), see ``reverse_pair_order``;
- queries, keys and values of both attention branches come from one matmul; per-pair arrays
  are never sliced along their feature axis (whose gradients cost zero-padding kernels);
- with many pairs, each block's pair work runs in rematerialised chunks, so that no (P, F)
  intermediate outlives its chunk (fresh large buffers cost page faults on every call).
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
    rowwise_forward_jacobian,
    spherical_harmonics,
)

# Up to this many pairs, a block's pair work runs in one piece (with the radial filters of
# all blocks precomputed); above it, in chunks of this many pairs.
PAIR_CHUNK = 1024


def degree_contraction_matrix(degrees: Sequence[int]) -> np.ndarray:
    """(D, |L|) matrix M with ``(chi**2) @ M = C(chi)``, C_l = sum_m chi_lm^2 / sqrt(2l+1)."""
    idx = degree_index(degrees)
    m = np.zeros((len(idx), len(degrees)))
    m[np.arange(len(idx)), idx] = 1.0 / np.sqrt(2 * np.asarray(degrees)[idx] + 1)
    return m


def materialize(a: jnp.ndarray) -> jnp.ndarray:
    """Identity on (P, ...) arrays that XLA cannot fuse into its consumers.

    XLA:CPU otherwise re-evaluates cheap-looking producers (e.g. the cosine of the cutoff)
    inside every (P, F) kernel they are broadcast into, forward and backward. An identity
    scatter is opaque to fusion (``optimization_barrier`` is stripped before fusion on CPU).
    """
    idx = jnp.arange(a.shape[0])
    return jnp.zeros_like(a).at[idx].set(a, indices_are_sorted=True, unique_indices=True)


def reverse_pair_order(centers, neighbors, vectors, pair_mask, n_atoms: int):
    """A pair order whose second half holds the exact reverses of its first half.

    In a full neighbour list each pair (i, j, r) has a reverse (j, i, -r), with bitwise the
    same distance, which moreover is the same function of the positions: functions of d_ij
    need only be evaluated on the first half, gradients stay exact. Reverses are looked up
    assuming pairs sorted by (center, neighbour) and then checked exactly, so nothing is
    assumed about the input. Padding pairs are split between both halves.

    Returns ``order`` (P,), indices into the pairs, and ``valid`` (scalar bool), False unless
    every real pair has exactly one exact reverse (not so for half lists, or for several
    periodic images of one (i, j)); ``order`` is then the identity.
    """
    n_pairs = centers.shape[0]
    half = n_pairs // 2
    idx = jnp.arange(n_pairs)
    key = centers * n_atoms + neighbors
    reverse_key = neighbors * n_atoms + centers
    partner = jnp.searchsorted(key, reverse_key, method="compare_all")
    partner = jnp.minimum(partner, n_pairs - 1)
    found = (key[partner] == reverse_key) & (partner[partner] == idx) & pair_mask[partner]
    found &= jnp.all(vectors[partner] == -vectors, axis=1)
    first = pair_mask & (idx < partner)
    n_first = jnp.sum(first)
    rank = jnp.cumsum(first) - 1
    pad_rank = jnp.cumsum(~pair_mask) - 1
    n_pad = n_pairs - jnp.sum(pair_mask)
    pad_pos = n_first + jnp.where(pad_rank < n_pad // 2, pad_rank, half + pad_rank - n_pad // 2)
    pos = jnp.where(pair_mask, jnp.where(first, rank, half + rank[partner]), pad_pos)
    valid = jnp.all(found | ~pair_mask) & (2 * n_first + n_pad == n_pairs) & (n_pad % 2 == 0)
    order = jnp.zeros_like(idx).at[jnp.where(valid, pos, idx)].set(idx, unique_indices=True)
    return order, valid


def radial_filters(rbf, w1, b1, w2, b2):
    """Dense-SiLU-Dense radial MLPs of all blocks and branches: lists [block][branch] of (P, F).

    rbf (P, K); weights with leading axes (block, branch): w1 (T, 2, K, F), b1 (T, 2, F),
    w2 (T, 2, F, F), b2 (T, 2, F).
    """
    return [
        [nn.silu(rbf @ w1[t, b] + b1[t, b]) @ w2[t, b] + b2[t, b] for b in range(2)]
        for t in range(w1.shape[0])
    ]


def block_diagonal(w: jnp.ndarray) -> jnp.ndarray:
    """Per-head weight blocks (H, d, d) -> the (H d, H d) block-diagonal matrix."""
    h, d, _ = w.shape
    eye = jnp.eye(h, dtype=w.dtype)
    return (w[:, :, None, :] * eye[:, None, :, None]).reshape(h * d, h * d)


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

    Args of ``__call__`` (P pairs, N atoms, D EV components; branch 0 is the invariant one,
    branch 1 the EV one):
        x (N, F); chi (N, D), or None for the all-zero EVs of the first block;
        radial: this block's radial filter parts MLP_r(phi(d)), two (P, F) arrays; or, to have
            them evaluated chunk by chunk, a tuple (rbf (P, K), this block's weights of
            ``radial_filters`` with a leading block axis of size 1);
        ylm (P, D); cut (P,) cutoff weights (0 for padding); centers (P,) atom i;
        neighbors (P,) atom j.

    Parameters: per-head query/key(/value) blocks (heads, F/heads, F/heads) of the invariant
    branch (``inv_*``, H heads) and of the EV branch (``ev_*``, one head per degree); for both
    branches the MLP |L| -> F/4 -> F of C(chi_j - chi_i) (``ev_filter_*``).
    """

    num_heads: int
    degrees: Sequence[int]
    layer_norm: bool = False
    residual_mlp: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, chi, radial, ylm, cut, centers, neighbors):
        n_atoms, f = x.shape
        heads = (self.num_heads, len(self.degrees))
        dt = self.dtype
        fs = max(f // 4, 1)
        lecun = nn.initializers.lecun_normal(batch_axis=(0,))  # fan-in per leading block
        zeros = nn.initializers.zeros

        # q, k (SiLU) and v of both branches from one matmul with a block-diagonal kernel.
        def blocks(name, h):
            return block_diagonal(self.param(name, lecun, (h, f // h, f // h), dt))

        names = ("inv_query", "ev_query", "inv_key", "ev_key", "inv_value")
        qkv = x @ jnp.concatenate([blocks(n, heads[k % 2]) for k, n in enumerate(names)], 1)
        q_atoms = [nn.silu(qkv[:, b * f : (b + 1) * f]) for b in range(2)]
        k_atoms = [nn.silu(qkv[:, (2 + b) * f : (3 + b) * f]) for b in range(2)]
        v_atoms = qkv[:, 4 * f :]

        # Filters: radial part (given) + MLP of C(chi_j - chi_i), per branch.
        w1_s = self.param("ev_filter_kernel_1", lecun, (2, len(self.degrees), fs), dt)
        b1_s = self.param("ev_filter_bias_1", zeros, (2, fs), dt)
        w2_s = self.param("ev_filter_kernel_2", lecun, (2, fs, f), dt)
        bias = self.param("ev_filter_bias_2", zeros, (2, f), dt)
        if chi is None:  # C(0) = 0: the EV-difference MLP is a constant
            bias = bias + jnp.einsum("bh,bhf->bf", nn.silu(b1_s), w2_s)
        contract = jnp.asarray(degree_contraction_matrix(self.degrees), dt)
        deg_idx = degree_index(self.degrees)
        scale = [np.asarray(1.0 / np.sqrt(f // h), dt) for h in heads]

        def messages(radial, ylm, cut, centers, neighbors):
            """Sums over a set of pairs per center: (N, F + D)."""

            def at(a, idx):
                return a.at[idx].get(mode="promise_in_bounds")

            w = [radial[b] + bias[b] for b in range(2)]
            if chi is not None:
                dchi = at(chi, neighbors) - at(chi, centers)
                c = (dchi * dchi) @ contract
                w = [w[b] + nn.silu(c @ w1_s[b] + b1_s[b]) @ w2_s[b] for b in range(2)]
            n = cut.shape[0]
            alpha = [
                (at(q_atoms[b], centers) * w[b] * at(k_atoms[b], neighbors))
                .reshape(n, heads[b], -1)
                .sum(-1)
                * (cut * scale[b])[:, None]
                for b in range(2)
            ]
            v = at(v_atoms, neighbors).reshape(n, heads[0], -1)
            msg_x = (alpha[0][:, :, None] * v).reshape(n, f)
            msg = jnp.concatenate([msg_x, alpha[1][:, deg_idx] * ylm], axis=1)
            out = jnp.zeros((n_atoms, msg.shape[1]), dt)
            return out.at[centers].add(msg, mode="promise_in_bounds")

        if not isinstance(radial, tuple):
            upd = messages(radial, ylm, cut, centers, neighbors)
        else:
            # Pad to whole chunks with null pairs (cut = 0) on the last atom, then scan;
            # checkpointing recomputes each chunk's intermediates in the backward pass instead
            # of keeping them all.
            rbf, weights = radial
            pair_args = (rbf, ylm, cut, centers, neighbors)
            n_chunks = -(-cut.shape[0] // PAIR_CHUNK)
            pad = n_chunks * PAIR_CHUNK - cut.shape[0]
            chunks = []
            for a in pair_args:
                fill = n_atoms - 1 if a.dtype.kind == "i" else 0
                a = jnp.concatenate([a, jnp.full((pad,) + a.shape[1:], fill, a.dtype)])
                chunks.append(a.reshape((n_chunks, PAIR_CHUNK) + a.shape[1:]))

            @jax.checkpoint
            def body(acc, chunk):
                rbf, *rest = chunk
                return acc + messages(radial_filters(rbf, *weights)[0], *rest), None

            upd = jax.lax.scan(body, jnp.zeros((n_atoms, f + ylm.shape[1]), dt), chunks)[0]

        x = x + upd[:, :f]
        chi = upd[:, f:] if chi is None else chi + upd[:, f:]
        if self.layer_norm:
            x = nn.LayerNorm(dtype=dt, param_dtype=dt)(x)
        if self.residual_mlp:
            x = ResidualMLP(dtype=dt)(x)
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

    The radial filter MLPs K -> F -> F of all blocks and both branches are parameters of this
    module (``radial_*``, leading axes (block, branch)), as they are evaluated together.
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
        """numbers (N,), vectors r_ij (P, 3) in Å, centers/neighbors (P,), pair_mask (P,).

        Padding pairs are masked by ``pair_mask``. Pairs sorted by (center, neighbour) are
        fastest (see ``reverse_pair_order``), but any order gives the same result.
        """
        if self.features % self.num_heads or self.features % len(self.degrees):
            raise ValueError("features must be divisible by num_heads and by len(degrees)")
        dt, f, t_max = self.dtype, self.features, self.num_layers
        n_atoms, n_pairs = numbers.shape[0], pair_mask.shape[0]
        centers, neighbors, pair_mask = map(jnp.asarray, (centers, neighbors, pair_mask))
        vectors = jnp.asarray(vectors, dt)
        halve = n_pairs <= PAIR_CHUNK and n_pairs % 2 == 0 and n_atoms * n_atoms < 2**31
        if halve:  # reorder the pairs: the second half reverses the first
            order, valid = reverse_pair_order(centers, neighbors, vectors, pair_mask, n_atoms)
            centers, neighbors, vectors, pair_mask = (
                a.at[order].get(mode="promise_in_bounds", unique_indices=True)
                for a in (centers, neighbors, vectors, pair_mask)
            )

        def geometry(r):  # (P, 3) -> cutoff (P, 1), radial basis (P, K), harmonics (P, D)
            d = jnp.sqrt(jnp.sum(r * r, axis=-1))
            return (
                cutoff_function(self.cutoff_fn, d, self.cutoff)[:, None],
                radial_basis(self.radial_basis, d, self.num_radial, self.cutoff),
                spherical_harmonics(r / d[:, None], self.degrees),
            )

        # Padding pairs get a harmless unit-length vector so that no NaN reaches a gradient.
        safe = jnp.where(pair_mask[:, None], vectors, jnp.ones_like(vectors))
        cut, rbf, ylm = rowwise_forward_jacobian(geometry)(safe)
        cut = materialize(cut[:, 0] * pair_mask)

        lecun = nn.initializers.lecun_normal(batch_axis=(0, 1))
        zeros = nn.initializers.zeros
        weights = (
            self.param("radial_kernel_1", lecun, (t_max, 2, self.num_radial, f), dt),
            self.param("radial_bias_1", zeros, (t_max, 2, f), dt),
            self.param("radial_kernel_2", lecun, (t_max, 2, f, f), dt),
            self.param("radial_bias_2", zeros, (t_max, 2, f), dt),
        )
        if n_pairs > PAIR_CHUNK:
            radial = [(rbf, tuple(w[t : t + 1] for w in weights)) for t in range(t_max)]
        elif halve:
            # Filters of the second half are those of the first; without exact reverses they
            # are evaluated (rematerialised, so that this costs nothing when not taken).
            first = radial_filters(rbf[: n_pairs // 2], *weights)
            second = jax.lax.cond(
                valid,
                lambda: first,
                lambda: jax.checkpoint(radial_filters)(rbf[n_pairs // 2 :], *weights),
            )
            radial = [
                [jnp.concatenate([a, b]) for a, b in zip(fa, fb)] for fa, fb in zip(first, second)
            ]
        else:
            radial = radial_filters(rbf, *weights)

        # Unit-variance embeddings: flax's default (std 1/sqrt(F)) leaves the attention, and so
        # the forces, nearly blind to geometry at initialisation and training stalls at first.
        embed_init = nn.initializers.normal(stddev=1.0)
        x = nn.Embed(self.num_elements, f, dtype=dt, param_dtype=dt, embedding_init=embed_init)(numbers)
        chi = None  # chi^0 = 0
        for t in range(t_max):
            x, chi = EuclideanAttention(
                self.num_heads, self.degrees, self.layer_norm, self.residual_mlp, dt,
                name=f"attention_{t}",
            )(x, chi, radial[t], ylm, cut, centers, neighbors)
            x, chi = Exchange(
                self.degrees, self.layer_norm, self.residual_mlp, dt, name=f"exchange_{t}"
            )(x, chi)

        h = nn.silu(nn.Dense(f, dtype=dt, param_dtype=dt)(x))
        out = nn.Dense(1, dtype=dt, param_dtype=dt)(h)[:, 0]
        scale = self.param(
            "element_scale", nn.initializers.constant(self.energy_scale), (self.num_elements,), dt
        )
        shift = self.param("element_shift", nn.initializers.zeros, (self.num_elements,), dt)
        return scale[numbers] * out + shift[numbers]
