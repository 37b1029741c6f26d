"""The Ewald sum of periodic point charges, as an energy term.

The Coulomb energy of charges ``q_i`` at ``R_i`` in a 3D-periodic cell (tin-foil boundary
conditions: no surface-dipole term), split by a Gaussian of width ``1/(√2 α)`` into

    E = k_e [ ½ Σ_i Σ'_(j,S) q_i q_j erfc(α r_ij) / r_ij            (real space, the pair list)
            + (2π/V) Σ_(k≠0) exp(-k²/4α²) / k² |S(k)|²                (reciprocal space)
            - α/√π Σ_i q_i²                                            (self)
            - π Q² / (2 V α²) ]                                        (neutralising background)

with ``S(k) = Σ_j q_j exp(i k·R_j)``, ``Q = Σ_i q_i`` and ``k_e`` = :data:`COULOMB_CONSTANT`.
The total does not depend on ``α``; only the truncations (real-space cutoff, ``|k|`` cutoff)
do, and :func:`ewald_parameters` balances them for a requested accuracy.

Per-atom energies sum to the total: each real-space pair half to each atom (a full list holds
it both ways), the reciprocal part as ``q_i Re(exp(-i k·R_i) S(k))`` per k, the self term on
its atom and the background spread evenly over the real atoms.

Reciprocal vectors are stored as integers ``m`` and turned into ``k = 2π m inv(cell)ᵀ`` from
the (traced) cell inside the energy: the strain derivative (stress) is then exact for the
fixed set of ``m``, and forces, stress and Hessians follow from ``so3krates.potential``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erfc

from so3krates.neighbours import neighbour_list
from so3krates.terms.coulomb import K_E

COULOMB_CONSTANT = K_E  # eV Å / e², the electrostatics term's constant
"""k_e = 1/(4π ε0) in eV Å / e² (ASE's CODATA values, ~14.3996)."""


class EwaldParameters(NamedTuple):
    """Splitting parameter and reciprocal-lattice indices of an Ewald sum.

    Attributes:
        alpha: inverse Gaussian width, 1/Å (real space decays as erfc(α r)).
        kvectors: integer reciprocal-lattice indices m, (K, 3) int32, one of each ±m pair
            (half space: first non-zero component positive; the energy counts each twice).
            Rows of zeros are padding and are ignored.
    """

    alpha: float
    kvectors: np.ndarray


def _erfc_inverse(accuracy: float) -> float:
    """x with erfc(x) = accuracy (bisection on the host; erfc is monotonic)."""
    lo, hi = 0.0, 30.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if math.erfc(mid) > accuracy else (lo, mid)
    return 0.5 * (lo + hi)


def ewald_parameters(cell: np.ndarray, real_cutoff: float,
                     accuracy: float = 1e-6) -> EwaldParameters:
    """``alpha`` and the k-vector indices for ``cell`` (3, 3) (lattice vectors as rows, Å).

    ``alpha`` solves ``erfc(α rc) = accuracy`` for the real-space cutoff ``rc`` (Å); the
    reciprocal cutoff balances it, ``exp(-k_c²/4α²) = exp(-(α rc)²)``: ``k_c = 2 α² rc``.
    The indices are all ``m ≠ 0`` of one half space with ``|2π m inv(cell)ᵀ| <= k_c``.
    ``accuracy`` is relative to the pair terms, not a bound on the energy error. When the
    cell changes (NPT, cell relaxation) the indices stay those of this cell: derivatives
    remain exact while the accuracy drifts with the deformation; recompute after large ones.
    """
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    if abs(np.linalg.det(cell)) < 1e-12:
        raise ValueError("the Ewald sum needs a 3D-periodic cell with a volume")
    x = _erfc_inverse(float(accuracy))
    alpha = x / float(real_cutoff)
    k_cut = 2.0 * alpha * x
    reciprocal = 2.0 * np.pi * np.linalg.inv(cell).T  # rows b_i, a_i · b_j = 2π δ_ij
    # m_i = k · a_i / 2π: every index of the sphere lies in this box.
    bound = np.floor(k_cut * np.linalg.norm(cell, axis=1) / (2.0 * np.pi)).astype(int)
    axes = [np.arange(-n, n + 1) for n in bound]
    m = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    # One of each ±m: the first non-zero index positive (m = 0 excluded).
    half = (m[:, 0] > 0) | ((m[:, 0] == 0) & ((m[:, 1] > 0)
                                              | ((m[:, 1] == 0) & (m[:, 2] > 0))))
    inside = np.linalg.norm(m @ reciprocal, axis=1) <= k_cut
    return EwaldParameters(alpha, m[half & inside].astype(np.int32))


def _reciprocal(cell: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Volume () Å³ and reciprocal vectors as rows (3, 3) 1/Å, ``a_i · b_j = 2π δ_ij``
    (closed form of a 3 × 3 inverse: cross products over the triple product)."""
    a, b, c = cell
    cross = jnp.stack([jnp.cross(b, c), jnp.cross(c, a), jnp.cross(a, b)])
    signed = jnp.dot(a, cross[0])
    return jnp.abs(signed), 2.0 * jnp.pi * cross / signed


def ewald_atomic_energies(
    positions: jnp.ndarray,
    charges: jnp.ndarray,
    cell: jnp.ndarray,
    centers: jnp.ndarray,
    neighbours: jnp.ndarray,
    shifts: jnp.ndarray,
    pair_mask: jnp.ndarray,
    atom_mask: jnp.ndarray,
    alpha: float | jnp.ndarray,
    kvectors: jnp.ndarray,
) -> jnp.ndarray:
    """Per-atom Ewald energies (N,) in eV, zero for padding atoms.

    Args:
        positions: (N, 3) Å; charges: (N,) in e; cell: (3, 3) lattice vectors as rows, Å.
        centers, neighbours: (P,) a full neighbour list within the real-space cutoff (each
            pair both ways, images of an atom itself included), shifts: (P, 3) lattice shifts
            in cell-vector units, ``r_ij = R_j - R_i + shifts @ cell`` (as
            ``so3krates.neighbours.neighbour_list`` gives them).
        pair_mask: (P,) False for padding pairs; atom_mask: (N,) False for padding atoms.
        alpha: splitting parameter 1/Å and kvectors: (K, 3) integer half-space indices, as
            :func:`ewald_parameters` gives them for this cell and cutoff.

    Pairs listed beyond the cutoff (a Verlet skin) only add accuracy.
    """
    dtype = positions.dtype
    q = jnp.where(atom_mask, charges.astype(dtype), 0.0)
    n_atoms = positions.shape[0]

    # Real space: erfc(α r)/r per listed pair, half to its centre (the reverse listing
    # gives the other half). Padding pairs (zero vectors) get r = 1: no 1/0 in any derivative.
    vectors = (positions[neighbours] - positions[centers]
               + shifts.astype(dtype) @ cell)
    r2 = jnp.where(pair_mask, jnp.sum(vectors * vectors, axis=-1), 1.0)
    r = jnp.sqrt(r2)
    pair = jnp.where(pair_mask, q[centers] * q[neighbours] * erfc(alpha * r) / r, 0.0)
    real = 0.5 * jax.ops.segment_sum(pair, centers, n_atoms)

    # Reciprocal space, half space counted twice: (4π/V) Σ_k w(k) q_i Re(e^{-ik·R_i} S(k)).
    volume, reciprocal_cell = _reciprocal(cell)
    k = kvectors.astype(dtype) @ reciprocal_cell  # (K, 3) 1/Å
    k2 = jnp.sum(k * k, axis=-1)
    valid_k = jnp.any(kvectors != 0, axis=-1)  # zero rows are padding: no 1/0 at k = 0
    k2 = jnp.where(valid_k, k2, 1.0)
    weight = jnp.where(valid_k, jnp.exp(-k2 / (4.0 * alpha**2)) / k2, 0.0)
    phase = positions @ k.T  # (N, K)
    cos, sin = jnp.cos(phase), jnp.sin(phase)
    structure_cos, structure_sin = q @ cos, q @ sin  # Re, Im of S(k), (K,)
    reciprocal = (4.0 * jnp.pi / volume) * q * (
        (cos * structure_cos + sin * structure_sin) @ weight)

    self_term = -alpha / jnp.sqrt(jnp.pi) * q**2
    # A non-neutral cell sits in a uniform neutralising background; its energy (∝ Q²) has no
    # atom of its own and is shared evenly by the real atoms.
    n_real = jnp.maximum(jnp.sum(atom_mask), 1)
    background = -jnp.pi * jnp.sum(q) ** 2 / (2.0 * volume * alpha**2) / n_real
    e = COULOMB_CONSTANT * (real + reciprocal + self_term + background)
    return jnp.where(atom_mask, e, 0.0)


_atomic_energies_jit = jax.jit(ewald_atomic_energies)


def ewald_energy(positions: np.ndarray, charges: np.ndarray, cell: np.ndarray,
                 real_cutoff: float = 8.0, accuracy: float = 1e-6) -> jnp.ndarray:
    """Total Ewald energy () in eV of one periodic structure (positions (N, 3) Å, charges (N,)
    e, cell (3, 3) Å): neighbour list and parameters built on the host, then
    :func:`ewald_atomic_energies` summed."""
    cell = np.asarray(cell, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    params = ewald_parameters(cell, real_cutoff, accuracy)
    nl = neighbour_list(positions, cell, np.ones(3, bool), real_cutoff)
    n, p = len(positions), len(nl.centers)
    e = _atomic_energies_jit(
        jnp.asarray(positions), jnp.asarray(charges, jnp.float64), jnp.asarray(cell),
        nl.centers, nl.neighbours, nl.shifts, np.ones(p, bool), np.ones(n, bool),
        params.alpha, params.kvectors)
    return jnp.sum(e)
