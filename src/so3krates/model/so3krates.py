"""The SO3krates Euclidean transformer (Frank et al., Nat. Commun. 2024).

Per-atom invariant features ``x`` (N, F) and Euclidean variables ``chi`` (N, D), D = sum(2l+1)
over the degrees in L, interact through cutoff-weighted attention (no softmax). The module maps
a padded graph to per-atom energy contributions; ``so3krates.potential`` turns those into total
energies (float64) and forces.

Performance notes (XLA:CPU, where small systems are bound by the number and the per-element
cost of (P, F) kernels, and large ones by memory traffic):

- the pair geometry (radial basis, cutoff, spherical harmonics) is computed once for all blocks
  (for large systems, once per chunk of pairs);
- the filters of each block are functions of d_ij and C(chi_j - chi_i), equal for a pair and
  its reverse, and are evaluated for one pair of each couple only, see ``reverse_pair_order``;
- queries, keys and values of both attention branches come from one matmul; per-pair arrays
  are never sliced along their feature axis (whose gradients cost zero-padding kernels);
- with many pairs, each block's pair work runs in rematerialised chunks, so that no (P, F)
  intermediate outlives its chunk (fresh large buffers cost page faults on every call);
- for inference (``radial_knots`` > 0, fixed parameters) the radial filters come from spline
  tables, and the q/k/v kernels and the transposes of all kernels are stored (see
  :func:`inference_params`): the forces' backward pass then never multiplies by a transposed
  operand, which XLA:CPU does several times slower; the first block's q/k/v, functions of
  the element alone, are looked up;
- for inference on the CPU with up to one chunk of pairs, each block's pair work (spline
  filters, attention, messages and their gradients) is one fused C++ kernel
  (``so3krates.model.cpu_kernels``); :func:`pair_messages` is its pure-JAX reference.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from so3krates.compile import materialize
from so3krates.model import cpu_kernels
from so3krates.model.efa import EuclideanFastAttention
from so3krates.model.basis import (
    cutoff_function,
    degree_index,
    radial_basis,
    spherical_harmonics,
)
from so3krates.model.electronic import AtomicHead, ElectronicEmbedding
from so3krates.model.layers import (
    MATMUL_PRECISION,
    Dense,
    ResidualMLP,
    block_diagonal,
    derived_param,
    full_precision_matmuls,
    matmul_with_transpose,
    with_transposed_kernels,
    zero_unless,
)
from so3krates.neighbours.pairs import is_halves_layout, pair_chunk, reverse_pair_order
from so3krates.model.radial_table import evaluate_table, radial_filter_table, spline_coordinate


def degree_contraction_matrix(degrees: Sequence[int]) -> np.ndarray:
    """(D, |L|) matrix M with ``(chi**2) @ M = C(chi)``, C_l = sum_m chi_lm^2 / sqrt(2l+1)."""
    idx = degree_index(degrees)
    m = np.zeros((len(idx), len(degrees)))
    m[np.arange(len(idx)), idx] = 1.0 / np.sqrt(2 * np.asarray(degrees)[idx] + 1)
    return m


def qkv_kernel(inv_qkv: jnp.ndarray, ev_qk: jnp.ndarray) -> jnp.ndarray:
    """(F, 5F) kernel of all queries, keys and values of a block: [q, k, v of the invariant
    branch | q, k of the EV branch], each block-diagonal over its heads."""
    return jnp.concatenate([block_diagonal(inv_qkv), block_diagonal(ev_qk)], 1)


def activate_qkv(qkv: jnp.ndarray) -> jnp.ndarray:
    """Queries, keys and values [q0 | k0 | v | q1 | k1] (..., 5F) with the queries and keys
    activated (SiLU): the fused kernel's input."""
    f = qkv.shape[-1] // 5
    return jnp.concatenate([nn.silu(qkv[..., : 2 * f]), qkv[..., 2 * f : 3 * f],
                            nn.silu(qkv[..., 3 * f :])], axis=-1)


def pair_messages(q, k, v, w, cut, ylm, centers, neighbours, n_atoms: int, component_degree,
                  heads: Sequence[int], scales: Sequence, barrier: bool = False) -> jnp.ndarray:
    """One block's messages summed per center atom, (N, F + D) (pure JAX; the reference of
    ``cpu_kernels.pair_attention``).

    Args (P pairs, N atoms, branch 0 invariant, branch 1 EV):
        q, k: per branch (N, F) activated queries and keys; v: (N, F) values;
        w: per branch (P, F) filters; cut: (P,) cutoff weights; ylm: (P, D);
        centers, neighbours: (P,); component_degree: (D,) the EV head of each component;
        heads: heads per branch; scales: their attention scales;
        barrier: keep the EV weights in memory (see ``EuclideanAttention``).

    ``upd_i = sum_{pairs (i, j)} [alpha0_h v_j | alpha1_l ylm_ij]`` with
    ``alpha_bh = cut scale_b sum_{f in head h} q_ib w_ijb k_jb``.
    """
    def at(a, idx):
        return a.at[idx].get(mode="promise_in_bounds")

    n, f = cut.shape[0], v.shape[1]
    alpha = [
        (at(q[b], centers) * w[b] * at(k[b], neighbours)).reshape(n, heads[b], -1).sum(-1)
        * (cut * scales[b])[:, None]
        for b in range(2)
    ]
    vj = at(v, neighbours).reshape(n, heads[0], -1)
    msg_x = (alpha[0][:, :, None] * vj).reshape(n, f)
    if barrier:
        alpha[1] = materialize(alpha[1])
    msg = jnp.concatenate([msg_x, alpha[1][:, component_degree] * ylm], axis=1)
    out = jnp.zeros((n_atoms, msg.shape[1]), msg.dtype)
    return out.at[centers].add(msg, mode="promise_in_bounds")


class EuclideanAttention(nn.Module):
    """One SO3krates transformer block: filters, two attention branches, updates.

    Args of ``__call__`` (P pairs, N atoms, K radial functions, D EV components; branch 0 is
    the invariant one, branch 1 the EV one):
        x (N, F); chi (N, D), or None for the all-zero EVs of the first block;
        pair_inputs: a tuple of (P, ...) arrays, and pair_fn, mapping them (or a chunk of
            them) to ``(cut, radial, ylm, centers, neighbours)``: cutoff weights (P,) (0 for
            padding pairs), the radial basis (P, K) or, with ``radial_knots``, the distances'
            spline coordinates (P,) (see ``radial_table``), harmonics (P, D), atoms i and j (P,);
        valid: scalar bool, True if pairs [P/2, P) are the exact reverses of pairs [0, P/2)
            (see ``reverse_pair_order``), so that the filters need only be evaluated once;
            the Python constant True when the caller guarantees it (no fallback traced);
            None with ``fused_kernels`` for pairs in any order (every pair's filters);
        numbers: (N,) atomic numbers if x is still their embedding (the first block), else
            None; with ``radial_knots`` the activated queries, keys and values are then
            looked up per element (``qkv_by_element``, see :func:`inference_params`).
        With more than :func:`pair_chunk` pairs, pair_fn is applied chunk by chunk, each chunk
        taking the same rows of both halves.

    Parameters: per-head query/key/value blocks (3, H, F/H, F/H) of the invariant branch
    (``inv_qkv``, H heads), query/key blocks (2, |L|, F/|L|, F/|L|) of the EV branch (``ev_qk``,
    one head per degree); for both branches the radial MLP K -> F -> F (``radial_*``) and the
    MLP |L| -> F/4 -> F of C(chi_j - chi_i) (``ev_filter_*``), stacked on a leading axis.
    With ``radial_knots`` > 0 (inference) the radial MLPs are evaluated from a spline table
    of them (``radial_table``) and the kernels' transposes are read, all derived from the
    network's parameters by :func:`inference_params`.
    """

    num_heads: int
    degrees: Sequence[int]
    num_radial: int
    layer_norm: bool = False
    residual_mlp: bool = True
    dtype: Any = jnp.float32
    radial_knots: int = 0  # > 0: inference, reads the parameters of ``inference_params``
    fused_kernels: bool = False  # messages from ``cpu_kernels.pair_attention`` (radial_knots > 0)

    @nn.compact
    def __call__(self, x, chi, pair_inputs, pair_fn, valid, numbers=None):
        n_atoms, f = x.shape
        heads = (self.num_heads, len(self.degrees))
        dt = self.dtype
        fs = max(f // 4, 1)
        lecun = nn.initializers.lecun_normal(batch_axis=(0,))  # fan-in per leading block
        zeros = nn.initializers.zeros

        # q, k (SiLU) and v of both branches from one matmul with a block-diagonal kernel,
        # columns [q, k, v of the invariant branch | q, k of the EV branch].
        lecun_blocks = nn.initializers.lecun_normal(batch_axis=(0, 1))
        inv_qkv = self.param("inv_qkv", lecun_blocks, (3, heads[0], f // heads[0], f // heads[0]), dt)
        ev_qk = self.param("ev_qk", lecun_blocks, (2, heads[1], f // heads[1], f // heads[1]), dt)
        looked_up = bool(self.radial_knots) and numbers is not None  # q, k, v held fixed
        if looked_up:  # x = embedding: one row per element
            qkv = derived_param(self, "qkv_by_element")[numbers]
        elif self.radial_knots:  # inference: kernels precomputed, see ``inference_params``
            qkv = activate_qkv(matmul_with_transpose(x, derived_param(self, "qkv_kernel"),
                                                     derived_param(self, "qkv_kernel_t")))
        else:
            qkv = activate_qkv(x @ qkv_kernel(inv_qkv, ev_qk))
        q_atoms = [qkv[:, :f], qkv[:, 3 * f : 4 * f]]
        k_atoms = [qkv[:, f : 2 * f], qkv[:, 4 * f :]]
        v_atoms = qkv[:, 2 * f : 3 * f]

        # Filters of both branches: radial MLP (Dense-SiLU-Dense) + MLP of C(chi_j - chi_i).
        w1_r = self.param("radial_kernel_1", lecun, (2, self.num_radial, f), dt)
        b1_r = self.param("radial_bias_1", zeros, (2, f), dt)
        w2_r = self.param("radial_kernel_2", lecun, (2, f, f), dt)
        b2_r = self.param("radial_bias_2", zeros, (2, f), dt)
        w1_s = self.param("ev_filter_kernel_1", lecun, (2, len(self.degrees), fs), dt)
        b1_s = self.param("ev_filter_bias_1", zeros, (2, fs), dt)
        w2_s = self.param("ev_filter_kernel_2", lecun, (2, fs, f), dt)
        bias = b2_r + self.param("ev_filter_bias_2", zeros, (2, f), dt)
        if chi is None:  # C(0) = 0: the EV-difference MLP is a constant
            bias = bias + jnp.einsum("bh,bhf->bf", nn.silu(b1_s), w2_s)
        contract = np.asarray(degree_contraction_matrix(self.degrees), dt)  # a constant, not traced
        deg_idx = degree_index(self.degrees)
        scale = [np.asarray(1.0 / np.sqrt(f // h), dt) for h in heads]

        def at(a, idx):
            return a.at[idx].get(mode="promise_in_bounds")

        # The filters' parameters, passed explicitly (see ``zero_unless``).
        weights = {"bias": bias, "w1_s": w1_s, "b1_s": b1_s, "w2_s": w2_s}
        if self.radial_knots:  # inference: transposed kernels stored, see ``Dense``
            weights.update(table=derived_param(self, "radial_table"),
                           w1_s_t=derived_param(self, "ev_filter_kernel_1_t"),
                           w2_s_t=derived_param(self, "ev_filter_kernel_2_t"))
        else:
            weights.update(w1_r=w1_r, b1_r=b1_r, w2_r=w2_r)

        def ev_mlp(c, b, p):
            if self.radial_knots:
                h = nn.silu(matmul_with_transpose(c, p["w1_s"][b], p["w1_s_t"][b]) + p["b1_s"][b])
                return matmul_with_transpose(h, p["w2_s"][b], p["w2_s_t"][b])
            return nn.silu(c @ p["w1_s"][b] + p["b1_s"][b]) @ p["w2_s"][b]

        def filters(radial, centers, neighbours, chi, p):
            """Both branches' filters of a set of pairs: two (P, F) arrays; without ``radial``
            (the fused kernel adds it) their EV-difference parts and biases only."""
            if radial is None:
                w = [p["bias"][b] for b in range(2)]
            elif self.radial_knots:
                w_r = evaluate_table(p["table"], radial)  # (P, 2, F)
                w = [w_r[:, b] + p["bias"][b] for b in range(2)]
            else:
                w = [nn.silu(radial @ p["w1_r"][b] + p["b1_r"][b]) @ p["w2_r"][b] + p["bias"][b]
                     for b in range(2)]
            if chi is not None:
                dchi = at(chi, neighbours) - at(chi, centers)
                c = (dchi * dchi) @ contract
                w = [w[b] + ev_mlp(c, b, p) for b in range(2)]
            return w

        def messages(cut, radial, ylm, centers, neighbours, in_chunks=False):
            """Sums over pairs [first half | reverses] per center: (N, F + D)."""
            n = cut.shape[0]
            h = n // 2
            if self.fused_kernels:  # the kernel evaluates the radial filters for every pair
                if chi is None:
                    ev = weights["bias"][None]  # the same for every pair
                else:  # the EV parts of the first half's pairs, or of all if not in halves
                    rows = h if valid is True else n
                    ev = jnp.stack(filters(None, centers[:rows], neighbours[:rows], chi,
                                           weights), axis=1)
                return cpu_kernels.pair_attention(qkv, ev, weights["table"], radial, cut, ylm,
                                                  centers, neighbours, deg_idx, heads, scale,
                                                  halves=valid is True, qkv_grad=not looked_up)
            first = filters(radial[:h], centers[:h], neighbours[:h], chi, weights)
            if valid is True:  # the caller's layout (``pair_halves``): no fallback needed
                w = [jnp.concatenate([a, a]) for a in first]
            else:
                w = self._with_second_half(first, valid, filters, weights, chi,
                                           radial[h:], centers[h:], neighbours[h:])
            # Without the barrier (in chunks) XLA:CPU fuses the per-degree weights into their
            # expansion to the 2l+1 components and recomputes each (P, F) product-sum once
            # per component (6x for degrees 1-4): 1,008 atoms 72.7 -> 66.8 ms,
            # interleaved. One aspirin (no chunks) got slower with it (1.98 -> 2.05 ms).
            return pair_messages(q_atoms, k_atoms, v_atoms, w, cut, ylm, centers, neighbours,
                                 n_atoms, deg_idx, heads, scale, barrier=in_chunks)

        n_half = jax.tree.leaves(pair_inputs)[0].shape[0] // 2
        chunk = pair_chunk()
        if 2 * n_half <= chunk:
            upd = messages(*pair_fn(*pair_inputs))
        else:
            # Chunk k holds rows [k C, (k + 1) C) of both halves (padded with null pairs on
            # the last atom); the scan's checkpoint recomputes each chunk's intermediates in
            # the backward pass instead of keeping them all.
            n_chunks = -(-2 * n_half // chunk)
            size = -(-n_half // n_chunks)
            pad = n_chunks * size - n_half
            chunks = []
            for a in pair_inputs:
                fill = n_atoms - 1 if a.dtype.kind == "i" else 0
                fill = jnp.full((pad,) + a.shape[1:], fill, a.dtype)
                a = jnp.concatenate([a[:n_half], fill, a[n_half:], fill])
                a = a.reshape((2, n_chunks, size) + a.shape[1:]).swapaxes(0, 1)
                chunks.append(a.reshape((n_chunks, 2 * size) + a.shape[3:]))

            @jax.checkpoint
            def body(acc, chunk):
                return acc + messages(*pair_fn(*chunk), in_chunks=True), None

            upd = jax.lax.scan(body, jnp.zeros((n_atoms, f + len(deg_idx)), dt), chunks)[0]

        x = x + upd[:, :f]
        chi = upd[:, f:] if chi is None else chi + upd[:, f:]
        if self.layer_norm:
            x = nn.LayerNorm(dtype=dt, param_dtype=dt)(x)
        if self.residual_mlp:
            x = ResidualMLP(dtype=dt, transposed=self.radial_knots > 0)(x)
        return x, chi

    def _with_second_half(self, first, valid, filters, weights, chi, *second_half):
        """Both halves' filters: the first half's twice if ``valid`` (a traced bool), else the
        second half's evaluated. A plain cond keeps its untaken branch's residuals as
        zero-filled buffers: for training (the parameters are differentiated too) the branch
        is rematerialised, for inference it is recomputed in the backward pass only if it
        was taken."""
        if self.radial_knots:
            second = zero_unless(valid, filters, *second_half, chi, fixed=(weights,))
        else:
            second = jax.lax.cond(
                valid,
                lambda: [jnp.zeros_like(a) for a in first],
                lambda: jax.checkpoint(filters)(*second_half, chi, weights),
            )
        return [jnp.concatenate([a, jnp.where(valid, a, b)]) for a, b in zip(first, second)]


class Exchange(nn.Module):
    """Exchange block: ``[x, C(chi)] -> (a, b)``; ``x += a``, ``chi_l += b_l chi_l``."""

    degrees: Sequence[int]
    layer_norm: bool = False
    residual_mlp: bool = True
    dtype: Any = jnp.float32
    transposed: bool = False  # inference: see ``Dense``

    @nn.compact
    def __call__(self, x, chi):
        f = x.shape[-1]
        contract = jnp.asarray(degree_contraction_matrix(self.degrees), self.dtype)
        h = jnp.concatenate([x, (chi * chi) @ contract], axis=-1)
        ab = Dense(f + len(self.degrees), self.dtype, self.transposed)(h)
        a, b = ab[:, :f], ab[:, f:]
        x = x + a
        chi = chi + b[:, degree_index(self.degrees)] * chi
        if self.layer_norm:
            x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.dtype)(x)
        if self.residual_mlp:
            x = ResidualMLP(dtype=self.dtype, transposed=self.transposed)(x)
        return x, chi


# Initialisers of the energy head's last kernel (``ModelConfig.output_init``). "zeros" starts
# training from E = sum_i e_Z (the fitted reference energies) and zero forces instead of the
# random network's: on rMD17 aspirin about 400 eV off and forces of 34 eV/Å rms, against
# 1.3 eV/Å in the data. The kernel's gradient is not zero, so the rest learns from step 2 on.
OUTPUT_INITS = {"lecun_normal": nn.initializers.lecun_normal(), "zeros": nn.initializers.zeros}


class So3krates(nn.Module):
    """SO3krates: padded graph -> per-atom energy contributions (N,) in eV (without e_Z).

    ``E_i = s_Z * MLP_out(x_i) + b_Z``; the float64 per-element reference energies e_Z are
    added outside the network (``so3krates.potential``), so that float32 models still resolve
    meV on totals of 10^4 eV.

    ``radial_knots`` > 0 evaluates the radial filters from spline tables with that many
    intervals (``so3krates.model.radial_table``): for inference, where the parameters are
    fixed; the tables (and the q/k/v kernels) are then parameters of each block, see
    :func:`inference_params`. 0 (the default, and what training uses) runs the network.
    With ``fused_kernels`` (the default) such an inference model on the CPU takes each block's
    messages and their gradients from a fused C++ kernel (``so3krates.model.cpu_kernels``)
    when the pairs fit in one chunk (``pair_chunk``): one aspirin's energy + forces 1.49 ->
    1.26 ms (reference model, interleaved in one process on the 2-core EPYC VM).
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
    radial_knots: int = 0
    output_init: str = "zeros"
    fused_kernels: bool = True
    # Electronic degrees of freedom (``so3krates.model.electronic``): embed each structure's
    # total charge and unpaired electrons; per-atom output heads besides the energy.
    charge_spin: bool = False
    heads: Sequence[str] = ()
    # Euclidean fast attention (``so3krates.model.efa``) after the blocks ``efa_blocks``.
    efa_frequencies: int = 16
    efa_max_frequency: float = 0.6
    efa_degree: int = 11
    efa_blocks: Sequence[int] = ()

    @nn.compact
    @full_precision_matmuls
    def __call__(self, numbers, vectors, centers, neighbours, pair_mask, pair_halves: bool = False,
                 electronic=None, positions=None):
        """numbers (N,), vectors r_ij (P, 3) in Å, centers/neighbours (P,), pair_mask (P,).

        ``electronic``: ``(structure (N,), charge (S,), spin (S,), atom_mask (N,))``, needed
        with ``charge_spin``. Returns the per-atom energies (N,), or with ``heads`` the tuple
        ``(energies, {head: (N,)})`` ("charge": raw partial charges in e, before
        ``so3krates.terms.coulomb.conserve_charge``; "hirshfeld": Hirshfeld-volume ratios).
        ``positions`` (N, 3) Å: needed with ``efa_blocks`` (with ``electronic`` for the
        structure index and atom mask).

        Padding pairs are masked by ``pair_mask``. Full neighbour lists sorted by (center,
        neighbour) are fastest (see ``reverse_pair_order``), but any pairs give the same result.

        ``pair_halves=True`` promises pairs in the halves layout (pair P/2 + k the exact
        reverse of pair k, padding opposite padding; ``so3krates.batching.pack`` makes it):
        nothing is reordered and no fallback is compiled (a training step of 2 aspirins
        compiles ~30 % faster; 1,008 atoms through the MD neighbour list run ~10 % faster).
        If the promise does not hold, every energy and force is NaN.
        """
        if self.features % self.num_heads or self.features % len(self.degrees):
            raise ValueError("features must be divisible by num_heads and by len(degrees)")
        dt, f = self.dtype, self.features
        n_atoms = numbers.shape[0]
        centers, neighbours = jnp.asarray(centers, jnp.int32), jnp.asarray(neighbours, jnp.int32)
        pair_mask = jnp.asarray(pair_mask)
        vectors = jnp.asarray(vectors, dt)
        # Inference on the CPU, up to one chunk of pairs: messages from the fused kernel. On
        # larger systems XLA's chunks stayed faster (1,008 atoms, kernel per chunk: 66 vs 58 ms).
        fused = (self.radial_knots > 0 and self.fused_kernels
                 and pair_mask.shape[0] + pair_mask.shape[0] % 2 <= pair_chunk()
                 and cpu_kernels.enabled())
        if pair_halves:  # the caller's promise, checked at the end
            if pair_mask.shape[0] % 2:
                raise ValueError("pair_halves needs an even number of pairs")
            layout_holds = is_halves_layout(centers, neighbours, vectors, pair_mask)
            valid = True
        else:
            if pair_mask.shape[0] % 2:  # one null pair more, so that the pairs split into halves
                centers, neighbours = (jnp.append(a, n_atoms - 1) for a in (centers, neighbours))
                vectors = jnp.concatenate([vectors, jnp.zeros((1, 3), dt)])
                pair_mask = jnp.append(pair_mask, False)
            if fused:  # the kernel takes the pairs in any order (filters of every pair)
                valid = None
            elif n_atoms * n_atoms < 2**31:  # reorder: the second half reverses the first
                order, valid = reverse_pair_order(centers, neighbours, vectors, pair_mask, n_atoms)
                centers, neighbours, vectors, pair_mask = (
                    a.at[order].get(mode="promise_in_bounds", unique_indices=True)
                    for a in (centers, neighbours, vectors, pair_mask)
                )
            else:
                valid = jnp.asarray(False)

        def geometry(vectors, pair_mask, centers, neighbours):
            """(cut, radial, ylm, centers, neighbours) of (a chunk of) pairs, see EuclideanAttention."""
            # Padding pairs get a harmless unit-length vector so that no NaN reaches a gradient.
            safe = jnp.where(pair_mask[:, None], vectors, jnp.ones_like(vectors))
            d = jnp.sqrt(jnp.sum(safe * safe, axis=-1))
            cut = materialize(cutoff_function(self.cutoff_fn, d, self.cutoff) * pair_mask)
            if self.radial_knots:
                radial = spline_coordinate(d, self.cutoff, self.radial_knots)
            else:
                radial = self.basis(d).astype(dt)
            ylm = spherical_harmonics(safe / d[:, None], self.degrees).astype(dt)
            return cut, radial, ylm, centers, neighbours

        pair_inputs = (vectors, pair_mask, centers, neighbours)
        if pair_mask.shape[0] <= pair_chunk():  # geometry once for all blocks
            pair_inputs, pair_fn = geometry(*pair_inputs), lambda *a: a
        else:  # each block evaluates it chunk by chunk (cheaper than keeping it in memory)
            pair_fn = geometry

        # Unit-variance embeddings: flax's default (std 1/sqrt(F)) leaves the attention, and so
        # the forces, nearly blind to geometry at initialisation and training stalls at first.
        embed_init = nn.initializers.normal(stddev=1.0)
        embed = nn.Embed(self.num_elements, f, dtype=dt, param_dtype=dt, embedding_init=embed_init)
        x = embed(numbers)
        if self.charge_spin:
            if electronic is None:
                raise ValueError("a model with charge_spin needs each structure's charge and "
                                 "spin (electronic=...)")
            structure, charge, spin, atom_mask = electronic
            for name, psi in (("charge_embedding", charge), ("spin_embedding", spin)):
                x = x + ElectronicEmbedding(dt, self.radial_knots > 0, name=name)(
                    x, psi, structure, atom_mask)
        chi = None  # chi^0 = 0
        for t in range(self.num_layers):
            x, chi = EuclideanAttention(
                self.num_heads, self.degrees, self.num_radial, self.layer_norm,
                self.residual_mlp, dt, self.radial_knots, fused, name=f"attention_{t}",
            )(x, chi, pair_inputs, pair_fn, valid,
              numbers if t == 0 and not self.charge_spin else None)
            x, chi = Exchange(
                self.degrees, self.layer_norm, self.residual_mlp, dt, self.radial_knots > 0,
                name=f"exchange_{t}",
            )(x, chi)
            if t in self.efa_blocks:  # global, linear-cost attention on the invariant features
                if positions is None or electronic is None:
                    raise ValueError("a model with EFA needs positions and electronic=...")
                structure, charge, _, atom_mask = electronic
                x = x + EuclideanFastAttention(
                    self.efa_frequencies, self.efa_max_frequency, self.efa_degree, dt,
                    name=f"efa_{t}")(x, positions, structure, charge.shape[0], atom_mask)

        tr = self.radial_knots > 0
        h = nn.silu(Dense(f, dt, tr)(x))
        out = Dense(1, dt, tr, kernel_init=OUTPUT_INITS[self.output_init])(h)[:, 0]
        scale = self.param(
            "element_scale", nn.initializers.constant(self.energy_scale), (self.num_elements,), dt
        )
        shift = self.param("element_shift", nn.initializers.zeros, (self.num_elements,), dt)
        energies = scale[numbers] * out + shift[numbers]
        if pair_halves:  # a factor, not a where: forces (the gradient) become NaN as well
            energies = energies * jnp.where(layout_holds, 1.0, jnp.nan).astype(dt)
        if not self.heads:
            return energies
        # Charges start at 0; Hirshfeld ratios (softplus of the head, see PhysicalTerms) at 1.
        offsets = {"charge": 0.0, "hirshfeld": float(np.log(np.e - 1.0))}
        outputs = {head: AtomicHead(self.num_elements, offsets[head], dt, tr, name=f"{head}_head")(
            x, numbers) for head in self.heads}
        return energies, outputs

    @property
    def basis(self):
        """The radial basis: distances d (P,) in Å -> (P, num_radial)."""
        return functools.partial(radial_basis, self.radial_basis, num=self.num_radial,
                                 cutoff=self.cutoff)


def inference_params(module: So3krates, params: dict) -> dict:
    """``params`` plus what ``module`` (with ``radial_knots`` > 0) reads precomputed instead of
    deriving it from them at every call (its ``derived_param`` s, made here only): the spline
    tables of the radial filters, the q/k/v kernels and the kernels' transposes, and the first
    block's activated queries, keys and values of every element (its input is the embedding:
    a lookup instead of a (N, F) x (F, 5F) matmul). The network parameters are unchanged.
    Returns ``params`` itself when the module runs the network (``radial_knots`` == 0)."""
    if not module.radial_knots:
        return params
    out = with_transposed_kernels(params)
    for t in range(module.num_layers):
        block = dict(out[f"attention_{t}"])
        block["radial_table"] = radial_filter_table(
            block["radial_kernel_1"], block["radial_bias_1"], block["radial_kernel_2"],
            module.basis, module.cutoff, module.radial_knots, module.dtype,
        )
        block["qkv_kernel"] = qkv_kernel(block["inv_qkv"], block["ev_qk"])
        for k in (1, 2):
            block[f"ev_filter_kernel_{k}_t"] = jnp.swapaxes(block[f"ev_filter_kernel_{k}"], 1, 2)
        block["qkv_kernel_t"] = block["qkv_kernel"].T  # a new (row-major) array
        if t == 0:  # its input is the embedding: q, k and v per element, looked up
            with jax.default_matmul_precision(MATMUL_PRECISION):
                block["qkv_by_element"] = activate_qkv(
                    out["Embed_0"]["embedding"] @ block["qkv_kernel"])
        out[f"attention_{t}"] = block
    return out

