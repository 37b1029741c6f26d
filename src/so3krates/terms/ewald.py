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
from so3krates.neighbours.kspace import kspace_indices
from so3krates.terms.coulomb import K_E, switch_function

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


def ewald_split(real_cutoff: float, accuracy: float = 1e-6) -> tuple[float, float]:
    """``(alpha, k_cutoff)`` in 1/Å for a real-space cutoff (Å): ``alpha`` solves
    ``erfc(α rc) = accuracy``, and the reciprocal cutoff balances it,
    ``exp(-k_c²/4α²) = exp(-(α rc)²)``: ``k_c = 2 α² rc``. ``accuracy`` is relative to the
    pair terms, not a bound on the energy error."""
    if not 0.0 < accuracy < 1.0:
        raise ValueError(f"the Ewald accuracy must lie in (0, 1), got {accuracy}")
    x = _erfc_inverse(float(accuracy))
    alpha = x / float(real_cutoff)
    return alpha, 2.0 * alpha * x


def ewald_parameters(cell: np.ndarray, real_cutoff: float,
                     accuracy: float = 1e-6) -> EwaldParameters:
    """``alpha`` and the k-vector indices for ``cell`` (3, 3) (lattice vectors as rows, Å)
    and a real-space cutoff (Å), balanced by :func:`ewald_split`; the indices are those of
    ``so3krates.neighbours.kspace.kspace_indices``. When the cell changes (NPT, cell
    relaxation) the indices stay those of this cell: derivatives remain exact while the
    accuracy drifts with the deformation; recompute after large ones.
    """
    alpha, k_cut = ewald_split(real_cutoff, accuracy)
    return EwaldParameters(alpha, kspace_indices(cell, k_cut))


def reciprocal_cell(cell: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
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
    """Per-atom Ewald energies (N,) in eV of one structure, zero for padding atoms.

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
    # Real space: erfc(α r)/r per listed pair, half to its centre (the reverse listing
    # gives the other half). Padding pairs (zero vectors) get r = 1: no 1/0 in any derivative.
    vectors = (positions[neighbours] - positions[centers]
               + shifts.astype(dtype) @ cell)
    r2 = jnp.where(pair_mask, jnp.sum(vectors * vectors, axis=-1), 1.0)
    r = jnp.sqrt(r2)
    pair = jnp.where(pair_mask, q[centers] * q[neighbours] * erfc(alpha * r) / r, 0.0)
    real = 0.5 * COULOMB_CONSTANT * jax.ops.segment_sum(pair, centers, positions.shape[0])
    structure = jnp.zeros(positions.shape[0], jnp.int32)
    return real + kspace_atomic_energies(positions, q, structure, cell[None], kvectors[None],
                                         jnp.ones(1, bool), atom_mask, alpha)


def kspace_atomic_energies(
    positions: jnp.ndarray,
    charges: jnp.ndarray,
    structure: jnp.ndarray,
    cells: jnp.ndarray,
    kvectors: jnp.ndarray,
    periodic: jnp.ndarray,
    atom_mask: jnp.ndarray,
    alpha: float | jnp.ndarray,
) -> jnp.ndarray:
    """The reciprocal, self and background parts of the Ewald energy per atom, (N,) in eV, of
    the periodic structures of a padded batch (0 for the atoms of the others and padding).

    Args:
        positions: (N, 3) Å; charges: (N,) e; structure: structure index of each atom (N,).
        cells: (S, 3, 3) lattice vectors as rows, Å (anything for non-periodic structures).
        kvectors: (S, K, 3) integer half-space indices per structure (zero rows: padding),
            from ``so3krates.neighbours.kspace.kspace_indices``.
        periodic: (S,) True for the 3D-periodic structures.
        atom_mask: (N,) False for padding atoms; alpha: the splitting parameter, 1/Å.

    The real-space part (erfc(α r)/r over the pairs within the real-space cutoff) is the
    caller's; together they are the Ewald sum of :func:`ewald_atomic_energies`.
    """
    dtype = positions.dtype
    n_struct = cells.shape[0]
    on = atom_mask & periodic[structure]
    q = jnp.where(on, charges.astype(dtype), 0.0)
    # Non-periodic and padding structures get a unit cell: no zero volume in any derivative.
    cells = jnp.where(periodic[:, None, None], cells.astype(dtype), jnp.eye(3, dtype=dtype))
    volume, reciprocal_cells = jax.vmap(reciprocal_cell)(cells)  # (S,), (S, 3, 3)
    k = jnp.einsum("skc,scd->skd", kvectors.astype(dtype), reciprocal_cells)  # (S, K, 3) 1/Å
    k2 = jnp.sum(k * k, axis=-1)
    valid = jnp.any(kvectors != 0, axis=-1) & periodic[:, None]  # no 1/0 at k = 0 (padding)
    k2 = jnp.where(valid, k2, 1.0)
    weight = jnp.where(valid, jnp.exp(-k2 / (4.0 * alpha**2)) / k2, 0.0)  # (S, K)

    # Half space counted twice: (4π/V) Σ_k w(k) q_i Re(e^{-ik·R_i} S(k)), S(k) = Σ_j q_j e^{ik·R_j}.
    phase = jnp.einsum("nd,nkd->nk", positions, k[structure])  # (N, K)
    cos, sin = jnp.cos(phase), jnp.sin(phase)
    s_cos = jax.ops.segment_sum(q[:, None] * cos, structure, n_struct)  # Re S(k), (S, K)
    s_sin = jax.ops.segment_sum(q[:, None] * sin, structure, n_struct)
    reciprocal = (4.0 * jnp.pi / volume)[structure] * q * jnp.sum(
        weight[structure] * (cos * s_cos[structure] + sin * s_sin[structure]), axis=-1)

    e = COULOMB_CONSTANT * reciprocal + self_and_background(q, structure, volume, on, alpha,
                                                             n_struct)
    return jnp.where(on, e, 0.0)


def self_and_background(q: jnp.ndarray, structure: jnp.ndarray, volume: jnp.ndarray,
                        on: jnp.ndarray, alpha: float | jnp.ndarray, n_struct: int) -> jnp.ndarray:
    """The Ewald self term and the neutralising background per atom, (N,) in eV: charges
    ``q`` (N,) e (zero where ``on`` is False), ``structure`` (N,) indices into ``volume``
    (S,) Å³, ``alpha`` 1/Å."""
    self_term = -alpha / jnp.sqrt(jnp.pi) * q**2
    # A non-neutral cell sits in a uniform neutralising background; its energy (∝ Q²) has no
    # atom of its own and is shared evenly by the cell's atoms.
    count = jax.ops.segment_sum(on.astype(q.dtype), structure, n_struct)
    total = jax.ops.segment_sum(q, structure, n_struct)
    background = -jnp.pi * total**2 / (2.0 * volume * alpha**2) / jnp.maximum(count, 1.0)
    return COULOMB_CONSTANT * (self_term + background[structure])


def ewald_pair_energy(r: jnp.ndarray, qi: jnp.ndarray, qj: jnp.ndarray, mask: jnp.ndarray,
                      alpha: float, switch_on: float, switch_off: float) -> jnp.ndarray:
    """Real-space Ewald energy of each listed pair with the short-range damping of the
    molecular term (``so3krates.terms.coulomb.coulomb_pair_energy``), (P,) in eV:
    ``k_e q_i q_j [erfc(α r)/r + f(r) (1/sqrt(r² + 1) - 1/r)]``, ``f`` the switch from 1
    below ``switch_on`` to 0 above ``switch_off`` (Å). With the k-space part
    (:func:`kspace_atomic_energies`) this is the periodic sum of the damped Coulomb energy
    of the molecular term without its cutoff. Padding pairs (``mask`` False) give exactly 0.
    """
    rs = jnp.where(mask, r, switch_off)
    f = switch_function(rs, switch_on, switch_off)
    # erfc(αr)/r - f/r = (erfc(αr) - f)/r: bounded as r -> 0 where f = 1.
    e = (erfc(alpha * rs) - f) / rs + f / jnp.sqrt(rs * rs + 1.0)
    return jnp.where(mask, COULOMB_CONSTANT * qi * qj * e, 0.0)


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
