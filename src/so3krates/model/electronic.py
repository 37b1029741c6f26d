"""Electronic degrees of freedom of a network: total charge and spin in, per-atom
quantities out (SpookyNet, Unke et al., Nat. Commun. 2021; SO3LR).

- :class:`ElectronicEmbedding` spreads a per-structure scalar (total charge Q, or the number
  of unpaired electrons) over the atoms of the structure by attention and returns a feature
  vector per atom, added to the element embedding: the same geometry at Q = 0 and Q = +1
  then starts from different features and gets different energies.
- :class:`AtomicHead` reads a per-atom scalar (raw partial charge, Hirshfeld-volume ratio)
  from the final invariant features, with a learned per-element offset.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from so3krates.model.layers import Dense, ResidualMLP


class ElectronicEmbedding(nn.Module):
    """``e_i = ResMLP(a_i v)`` with ``a_i = psi_s softplus(q_i . k / sqrt F) / sum_{j in s}
    softplus(q_j . k / sqrt F)`` (SpookyNet's form): the attention weights of a structure's
    atoms sum to its value ``psi_s``, so the embedding is zero-sum-preserving and a neutral,
    closed-shell structure gets the embedding of ``psi = 0``. Keys and values differ for
    positive and negative ``psi`` (a cation is not a mirrored anion).

    Args of ``__call__``: x (N, F) element embeddings; psi (S,) per-structure values;
    structure (N,) each atom's structure; atom_mask (N,).
    """

    dtype: Any = jnp.float32
    transposed: bool = False  # inference: see ``Dense``

    @nn.compact
    def __call__(self, x, psi, structure, atom_mask):
        f = x.shape[-1]
        init = nn.initializers.normal(stddev=1.0)
        keys = self.param("keys", init, (2, f), self.dtype)
        values = self.param("values", init, (2, f), self.dtype)
        psi = jnp.asarray(psi, self.dtype)[structure]
        sign = (psi < 0).astype(jnp.int32)
        q = Dense(f, self.dtype, self.transposed)(x)
        w = nn.softplus(jnp.sum(q * keys[sign], axis=-1) / jnp.sqrt(f).astype(self.dtype))
        w = jnp.where(atom_mask, w, 0.0)
        total = jax.ops.segment_sum(w, structure, num_segments=structure.shape[0])[structure]
        a = psi * w / jnp.where(total > 0, total, 1.0)
        return ResidualMLP(dtype=self.dtype, transposed=self.transposed)(a[:, None] * values[sign])


class AtomicHead(nn.Module):
    """A per-atom scalar from invariant features: ``Dense(1)(SiLU(Dense(F)(x))) + b_Z``.

    ``offset`` initialises ``b_Z`` (with a zero last kernel the untrained head returns it).
    """

    num_elements: int = 119
    offset: float = 0.0
    dtype: Any = jnp.float32
    transposed: bool = False

    @nn.compact
    def __call__(self, x, numbers):
        h = nn.silu(Dense(x.shape[-1], self.dtype, self.transposed)(x))
        out = Dense(1, self.dtype, self.transposed, kernel_init=nn.initializers.zeros)(h)[:, 0]
        shift = self.param("element_offset", nn.initializers.constant(self.offset),
                           (self.num_elements,), self.dtype)
        return out + shift[numbers]
