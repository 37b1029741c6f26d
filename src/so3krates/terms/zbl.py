"""Ziegler–Biersack–Littmark (ZBL) universal screened nuclear repulsion, switched off smoothly.

``E(r) = k_e Z_i Z_j / r · φ(r / a) · s(r / r_c)`` with the universal screening length
``a = 0.8854 a0 / (Z_i^0.23 + Z_j^0.23)`` and the universal screening function
``φ(x) = Σ_k c_k exp(-b_k x)`` (Ziegler, Biersack and Littmark, *The Stopping and Range of Ions
in Solids*, 1985). It keeps atoms apart where training data never go (SpookyNet, SO3LR).

Pair functions take the pairs of a *full* neighbour list (each pair listed as (i, j) and
(j, i)) and return the full pair energy of each listing in eV (the caller halves it per atom).
Padding pairs (``mask`` False) give exactly 0 and no NaN in any derivative.
"""

from __future__ import annotations

import jax.numpy as jnp
from ase.units import Bohr

from so3krates.terms.coulomb import K_E

# Universal screening function: amplitudes c_k (summing to 1) and decay rates b_k.
ZBL_AMPLITUDES = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)
ZBL_LENGTH = 0.8854 * Bohr
"""0.8854 a0 in Å: the screening length is this over ``Z_i^0.23 + Z_j^0.23``."""


def polynomial_switch(x: jnp.ndarray) -> jnp.ndarray:
    """``1 - 10x³ + 15x⁴ - 6x⁵`` (the quintic smootherstep, reversed), for x in [0, 1].

    1 at x = 0 and 0 at x = 1, with zero first and second derivatives at both ends: the
    repulsion keeps its shape to O(x³) at short range and leaves the cutoff C²-smoothly.
    """
    return 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x * x)


def screening_function(x: jnp.ndarray) -> jnp.ndarray:
    """The universal ZBL screening function φ(x) = Σ_k c_k exp(-b_k x), φ(0) = 1."""
    return sum(c * jnp.exp(-b * x) for c, b in zip(ZBL_AMPLITUDES, ZBL_EXPONENTS))


def zbl_pair_energy(r: jnp.ndarray, zi: jnp.ndarray, zj: jnp.ndarray, cutoff: float,
                    mask: jnp.ndarray) -> jnp.ndarray:
    """ZBL repulsion of each listed pair, (P,) in eV (full pair energy, ≥ 0).

    Multiplied by :func:`polynomial_switch` of ``r / cutoff``: 0 at and beyond ``cutoff``.

    Args:
        r: pair distances, (P,) Å (anything for padding pairs, 0 included).
        zi, zj: atomic numbers of the centre and neighbour atom of each pair, (P,) (ints or
            floats; 0 for padding atoms is fine).
        cutoff: where the repulsion has vanished, Å.
        mask: True for real pairs, (P,) bool.
    """
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    inside = mask & (r < cutoff)
    # Padding pairs and pairs beyond the cutoff evaluated at a harmless distance and charge,
    # then discarded: no 1/0 or 0^0.23 in the branch that `where` drops.
    rs = jnp.where(inside, r, 0.5 * cutoff)
    zi = jnp.where(inside, jnp.asarray(zi, rs.dtype), 1.0)
    zj = jnp.where(inside, jnp.asarray(zj, rs.dtype), 1.0)
    a = ZBL_LENGTH / (zi**0.23 + zj**0.23)
    e = K_E * zi * zj / rs * screening_function(rs / a) * polynomial_switch(rs / cutoff)
    return jnp.where(inside, e, 0.0)
