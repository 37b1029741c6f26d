"""Electrostatics of partial charges: charge conservation, dipole moments and SpookyNet's damped
Coulomb pair energy.

Pair functions take the pairs of a *full* neighbour list (each pair listed as (i, j) and
(j, i)) and return the full pair energy of each listing, in eV: the caller gives half of it
to the centre atom. Padding pairs are flagged by ``mask`` and give exactly 0, with no NaN in
any derivative (forward or reverse mode), whatever their distance (0 included).

Units: distances in Å, charges in e, energies in eV, dipoles in e Å;
``K_E = Hartree · Bohr`` ≈ 14.399645 eV Å / e².
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from ase.units import Bohr, Hartree

K_E: float = Hartree * Bohr
"""Coulomb's constant 1 / (4π ε0) in eV Å / e²."""

_X_EDGE = 1e-3


def switch_function(r: jnp.ndarray, r_on: float, r_off: float) -> jnp.ndarray:
    """Smooth step from 1 (r ≤ ``r_on``) to 0 (r ≥ ``r_off``), (P,) dimensionless.

    The C∞ step built from ``exp(-1/x)`` (SpookyNet's and SO3LR's switch): with
    ``x = (r - r_on) / (r_off - r_on)`` it is ``σ(1/x - 1/(1 - x))`` in between (σ the
    logistic function, the numerically stable form of ``e^{-1/(1-x)} / (e^{-1/x} + e^{-1/(1-x)})``);
    every derivative vanishes at both ends.
    """
    x = (r - r_on) / (r_off - r_on)
    # Within 1e-3 of either end σ has saturated to exactly 1 or 0 (its argument exceeds 998 in
    # size; exp(-998) underflows, also in float32), so the ends are taken as they are: no
    # 1/x² overflow in a derivative (0 · inf = NaN) as x → 0.
    between = (x > _X_EDGE) & (x < 1.0 - _X_EDGE)
    xs = jnp.where(between, x, 0.5)
    inner = jax.nn.sigmoid((1.0 - 2.0 * xs) / (xs * (1.0 - xs)))
    return jnp.where(x <= _X_EDGE, 1.0, jnp.where(between, inner, 0.0)).astype(r.dtype)


def _check_switch(r_on: float, r_off: float) -> None:
    if not 0.0 <= r_on < r_off:
        raise ValueError(f"need 0 <= switch_on < switch_off, got {r_on} and {r_off}")


def conserve_charge(raw: jnp.ndarray, structure: jnp.ndarray, total_charge: jnp.ndarray,
                    atom_mask: jnp.ndarray) -> jnp.ndarray:
    """Partial charges summing to each structure's total charge, (N,) in e.

    ``q_i = raw_i + (Q_s - Σ_{k∈s} raw_k) / n_s`` over the real atoms of structure ``s``: the
    excess charge is spread evenly (SpookyNet, SO3LR), which keeps the map linear and smooth.

    Args:
        raw: uncorrected charges predicted per atom, (N,) e.
        structure: structure index of each atom, (N,) int.
        total_charge: total charge Q_s of each structure, (S,) e (S fixes the segment count).
        atom_mask: True for real atoms, (N,); padding atoms get 0 and are not counted in n_s.
    """
    n_struct = total_charge.shape[0]
    raw = jnp.where(atom_mask, raw, 0.0)
    count = jax.ops.segment_sum(atom_mask.astype(raw.dtype), structure, n_struct)
    excess = total_charge.astype(raw.dtype) - jax.ops.segment_sum(raw, structure, n_struct)
    # Structures without real atoms (padding) have nothing to spread over.
    shift = excess / jnp.where(count > 0, count, 1.0)
    return jnp.where(atom_mask, raw + shift[structure], 0.0)


def dipole_moment(positions: jnp.ndarray, charges: jnp.ndarray, structure: jnp.ndarray,
                  n_structures: int) -> jnp.ndarray:
    """Dipole moment ``μ_s = Σ_{i∈s} q_i R_i`` of each structure, (S, 3) in e Å.

    Padding atoms must carry zero charge (as :func:`conserve_charge` returns them). For a
    neutral structure μ does not depend on the origin; for a structure of total charge Q,
    moving the origin by ``t`` changes μ by ``-Q t``: it is the dipole about the Cartesian
    origin of ``positions`` (compare only with labels computed about the same origin, or use
    the centre of mass/charge yourself). In periodic cells it depends on which images the
    positions are (wrapped positions jump when an atom crosses the cell). 1 e Å ≈ 4.803 D.

    Args:
        positions: (N, 3) Å; charges: (N,) e; structure: structure index of each atom (N,);
        n_structures: S, a static int.
    """
    return jax.ops.segment_sum(charges[:, None] * positions, structure, n_structures)


def coulomb_pair_energy(r: jnp.ndarray, qi: jnp.ndarray, qj: jnp.ndarray, mask: jnp.ndarray,
                        switch_on: float, switch_off: float,
                        long_cutoff: float | None = None) -> jnp.ndarray:
    """SpookyNet's damped Coulomb energy of each listed pair, (P,) in eV (full pair energy).

    ``E = k_e q_i q_j [f(r) / sqrt(r² + 1) + (1 - f(r)) / r]`` with ``f`` the
    :func:`switch_function` from 1 below ``switch_on`` to 0 above ``switch_off``: the 1/r
    singularity is replaced by the bounded ``1/sqrt(r² + 1)`` (r in Å) at short range, where
    the network describes the interaction anyway, and the energy is exactly Coulomb's beyond
    ``switch_off``.

    With ``long_cutoff`` (rc, Å) both kernels take their shifted-force form, ``g(r) - g(rc) -
    g'(rc)(r - rc)`` (for 1/r: ``1/r + r/rc² - 2/rc``), and the energy is 0 from rc on:
    energy and force go to 0 continuously at rc (SpookyNet's choice; shifting the damped kernel
    too keeps the short-range mixture free of a 2/rc step).

    Args:
        r: pair distances, (P,) Å (anything for padding pairs, 0 included).
        qi, qj: charges of the centre and neighbour atom of each pair, (P,) e.
        mask: True for real pairs, (P,) bool.
        switch_on, switch_off: the short-range switching interval, Å (0 ≤ on < off).
        long_cutoff: None (plain 1/r tail) or the cutoff rc in Å.
    """
    _check_switch(switch_on, switch_off)
    if long_cutoff is not None and long_cutoff <= 0:
        raise ValueError(f"long_cutoff must be positive, got {long_cutoff}")
    inside = mask if long_cutoff is None else mask & (r < long_cutoff)
    # Padding pairs (and pairs beyond rc) evaluated at a harmless distance, then discarded.
    rs = jnp.where(inside, r, switch_off)
    f = switch_function(rs, switch_on, switch_off)
    # 1/r is needed only where f < 1, hence r > switch_on: a real pair at r = 0 keeps 0 · 1/r
    # out of the value and of every derivative.
    ro = jnp.where(f < 1.0, rs, switch_off)
    damped = 1.0 / jnp.sqrt(rs * rs + 1.0)
    coulomb = 1.0 / ro
    if long_cutoff is not None:
        rc = long_cutoff
        coulomb = coulomb + ro / rc**2 - 2.0 / rc
        # g = 1/sqrt(r² + 1): g(rc) + rc |g'(rc)| = (2 rc² + 1) / (rc² + 1)^(3/2).
        damped = damped + (rs * rc - (2.0 * rc**2 + 1.0)) / (rc**2 + 1.0) ** 1.5
    e = K_E * qi * qj * (f * damped + (1.0 - f) * coulomb)
    return jnp.where(inside, e, 0.0)
