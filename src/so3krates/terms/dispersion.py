"""Tkatchenko–Scheffler (TS) dispersion from Hirshfeld-volume ratios.

Tkatchenko and Scheffler, PRL 102, 073005 (2009): each atom's free-atom polarizability α0,
C6 coefficient and vdW radius R0 are rescaled by its Hirshfeld-volume ratio h = V_eff / V_free,

    α_i = h_i α0_i,   C6_i = h_i² C6_i,   R0_i = h_i^(1/3) R0_i,

pairs mix as ``C6_ij = 2 C6_i C6_j / (α_j/α_i C6_i + α_i/α_j C6_j)``, ``R0_ij = R0_i + R0_j``,
and the pair energy is ``-f(r) C6_ij / r⁶`` with the Fermi damping
``f = 1 / (1 + exp(-d (r / (s_R R0_ij) - 1)))``. In SO3LR the network predicts the ratios h;
here they are an input.

Free-atom data come from ASE (``ase.calculators.vdwcorrection.vdWDB_alphaC6``: α0 and C6 of
Chu and Dalgarno, JCP 121, 4083 (2004), the values TS used, plus Ruiz et al. for Ag, Au, Pd,
Pt). ASE has no TS radii (its TS calculator defaults to Grimme's D2 radii, a different
quantity), so R0 follows from α0 by Fedorov et al.'s relation, PRL 121, 183401 (2018):
``R0 = α_fsc^(-4/21) α0^(1/7)`` in atomic units (≈ 2.55 α0^(1/7) bohr, within 2.1 % of the
TS table for H, C, N, O; SO3LR derives its vdW radii the same way). Elements missing from ASE's
table (K, Ga, Ge, Rb, ...) have no data: :func:`free_atom_parameters` names them.

Pair functions take the pairs of a *full* neighbour list (each pair listed as (i, j) and
(j, i)) and return the full pair energy of each listing in eV (the caller halves it per atom).
Padding pairs (``mask`` False) give exactly 0 and no NaN in any derivative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.vdwcorrection import vdWDB_alphaC6
from ase.data import atomic_numbers, chemical_symbols
from ase.units import Bohr, Hartree, alpha as FINE_STRUCTURE

from so3krates.terms.coulomb import switch_function


def _free_atom_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(α0 in Å³, C6 in eV Å⁶, R0 in Å), each (119,) indexed by atomic number, NaN without
    data."""
    alpha0, c6, r0 = (np.full(len(chemical_symbols), np.nan) for _ in range(3))
    for symbol, (alpha_au, c6_au) in vdWDB_alphaC6.items():
        z = atomic_numbers[symbol]
        alpha0[z] = alpha_au * Bohr**3
        c6[z] = c6_au * Hartree * Bohr**6
        r0[z] = FINE_STRUCTURE ** (-4.0 / 21.0) * alpha_au ** (1.0 / 7.0) * Bohr
    return alpha0, c6, r0


ALPHA0_FREE, C6_FREE, R0_FREE = _free_atom_tables()
"""Free-atom polarizability (Å³), C6 (eV Å⁶) and vdW radius (Å) by atomic number; NaN where
ASE has no data."""


def free_atom_parameters(numbers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Free-atom ``(α0 Å³, C6 eV Å⁶, R0 Å)`` of atomic ``numbers`` (host arrays), each shaped
    like ``numbers``; ValueError naming the elements without data."""
    numbers = np.asarray(numbers, dtype=int)
    missing = sorted({int(z) for z in numbers.ravel()
                      if not 0 < z < len(chemical_symbols) or np.isnan(C6_FREE[z])})
    if missing:
        names = ", ".join(f"{chemical_symbols[z]} (Z={z})" if 0 < z < len(chemical_symbols)
                          else f"Z={z}" for z in missing)
        known = ", ".join(sorted(vdWDB_alphaC6, key=atomic_numbers.get))
        raise ValueError(f"no Tkatchenko-Scheffler free-atom data for {names}; "
                         f"ASE's table has {known}")
    return ALPHA0_FREE[numbers], C6_FREE[numbers], R0_FREE[numbers]


def _check_elements(z: jnp.ndarray, mask: jnp.ndarray) -> None:
    """Raise for real pairs of elements without data when ``z`` is concrete (under ``jit``
    such pairs give NaN energies instead)."""
    if isinstance(z, jax.core.Tracer) or isinstance(mask, jax.core.Tracer):
        return
    free_atom_parameters(np.asarray(z)[np.asarray(mask, dtype=bool)])


def ts_pair_energy(r: jnp.ndarray, zi: jnp.ndarray, zj: jnp.ndarray, hi: jnp.ndarray,
                   hj: jnp.ndarray, mask: jnp.ndarray, cutoff: float | None = None,
                   sR: float = 0.94, d: float = 20.0, cutoff_width: float = 2.0) -> jnp.ndarray:
    """TS dispersion energy of each listed pair, (P,) in eV (full pair energy, ≤ 0).

    Args:
        r: pair distances, (P,) Å (anything for padding pairs, 0 included).
        zi, zj: atomic numbers of the centre and neighbour atom, (P,) int.
        hi, hj: their Hirshfeld-volume ratios V_eff / V_free, (P,) (> 0; ~0.6–1 in molecules).
        mask: True for real pairs, (P,) bool.
        cutoff: None (every listed pair at full strength) or a cutoff in Å: the energy is then
            multiplied by :func:`~so3krates.terms.coulomb.switch_function` (the C∞ step of
            SpookyNet and SO3LR) from 1 at ``cutoff - cutoff_width`` to 0 at ``cutoff``.
        sR: range scaling of the damping (0.94 for PBE, TS 2009).
        d: steepness of the damping (20, TS 2009).
        cutoff_width: width of the switching interval below ``cutoff``, Å.
    """
    if cutoff is not None and not 0 < cutoff_width <= cutoff:
        raise ValueError(f"need 0 < cutoff_width <= cutoff, got {cutoff_width} and {cutoff}")
    _check_elements(zi, mask)
    _check_elements(zj, mask)
    inside = mask if cutoff is None else mask & (r < cutoff)
    # Padding pairs (and pairs beyond the cutoff) evaluated for an H-H pair at 1 Å, then
    # discarded: no NaN table entry, 0/0 or 0^(1/3) in the branch that `where` drops.
    rs = jnp.where(inside, r, 1.0)
    zi = jnp.where(inside, zi, 1)
    zj = jnp.where(inside, zj, 1)
    hi = jnp.where(inside, hi, 1.0)
    hj = jnp.where(inside, hj, 1.0)
    alpha, c6, r0 = (jnp.asarray(t, rs.dtype) for t in (ALPHA0_FREE, C6_FREE, R0_FREE))
    ai, aj, ci, cj = alpha[zi], alpha[zj], c6[zi], c6[zj]
    # The TS mixing rule with α ∝ h and C6 ∝ h² is exactly h_i h_j times the free-atom one:
    # no division by h, and smooth as a ratio goes to 0.
    c6_free = 2.0 * ci * cj * ai * aj / (aj * aj * ci + ai * ai * cj)
    c6_ij = hi * hj * c6_free
    r0_ij = jnp.cbrt(hi) * r0[zi] + jnp.cbrt(hj) * r0[zj]
    damping = jax.nn.sigmoid(d * (rs / (sR * r0_ij) - 1.0))
    r2 = rs * rs
    e = -damping * c6_ij / (r2 * r2 * r2)
    if cutoff is not None:
        e = e * switch_function(rs, cutoff - cutoff_width, cutoff)
    return jnp.where(inside, e, 0.0)
