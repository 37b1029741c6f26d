"""Grimme's DFT-D3 dispersion with Becke–Johnson damping, D3(BJ): the two-body terms.

Grimme, Antony, Ehrlich and Krieg, JCP 132, 154104 (2010) (D3); Grimme, Ehrlich and Goerigk,
JCC 32, 1456 (2011) (BJ damping). Each pair of atoms i, j at distance r contributes

    E_ij = -s6 C6_ij / (r⁶ + R0_ij⁶) - s8 C8_ij / (r⁸ + R0_ij⁸),
    R0_ij = a1 sqrt(C8_ij / C6_ij) + a2,

with ``C8_ij = 3 C6_ij sqrt(Q_i Q_j)``, ``Q = ½ sqrt(Z) ⟨r⁴⟩/⟨r²⟩`` and C6 interpolated between
the reference values of each element pair by the atoms' coordination numbers (CN):

    C6_ij = Σ_ab w_ia w_jb C6_ref(a, b),   w_ia ∝ exp(-k3 (CN_i - CN_ref,a)²),  k3 = 4,
    CN_i = Σ_j 1 / (1 + exp(-k1 (k2 (Rcov_i + Rcov_j) / r_ij - 1))),  k1 = 16, k2 = 4/3.

The three-body Axilrod–Teller–Muto term (s9) is *not* included: compare with D3(BJ) run with
s9 = 0 (``atm=False`` in the ``dftd3`` package). (s6, s8, a1, a2) depend on the functional
(:data:`BJ_PARAMETERS`, :func:`d3_bj_parameters`).

Reference data (Z = 1–94: C6 of every pair of reference systems, their CNs, covalent radii,
⟨r⁴⟩/⟨r²⟩) are Grimme's original 2010 values, shipped as ``terms/data/d3_reference.npz`` (see
the README there; no pickle) and loaded once, on first use. For H–Rn they are those of current
``dftd3`` releases; for Fr–Pu those replaced the 2010 references in 2023 with revised actinide
data (Wittmann et al., PCCP 26, 21379 (2024)), so energies with Fr–Pu differ from theirs.
Elements outside 1–94 raise ValueError where the atomic numbers are concrete; under ``jit``
they give NaN energies.

Conventions as in :mod:`so3krates.terms.dispersion`: pair functions take pair distances r (P,)
in Å, the atomic numbers of both ends and a ``mask`` (P,) (False = padding pair: exactly 0, no
NaN in any derivative, whatever its distance or atomic numbers), and return the *full* energy of
each listed pair in eV: summed as they are over a half list (each pair once), halved over a full
list (each pair both ways). :func:`coordination_numbers` takes either kind of list. Inside,
lengths are converted to bohr and energies computed in Hartree, the units of the reference data
and of the published a2; the interface is eV and Å (ASE's units).

Cutoffs: a pair term and the CN count are taken to zero by the C∞
:func:`~so3krates.terms.coulomb.switch_function` over the last ``cutoff_width`` Å before their
``cutoff``, so that energies and forces stay continuous as pairs enter or leave a pair list whose
cutoff is at least as long. ``cutoff_width=0`` truncates hard at ``cutoff`` (discontinuous), as
the ``dftd3`` program does; the defaults :data:`D3_CUTOFF` and :data:`CN_CUTOFF` are its default
two-body and CN cutoffs (60 and 40 bohr in ``dftd3`` 1.7.0).
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols
from ase.units import Bohr, Hartree

from so3krates.neighbours import long_range_list, neighbour_list
from so3krates.terms.coulomb import switch_function

K1: float = 16.0
"""Steepness of the CN counting function."""
K2: float = 4.0 / 3.0
"""Scaling of the covalent radii in the CN counting function."""
K3: float = 4.0
"""Width parameter of the Gaussian CN weights of the reference C6."""
MAX_Z: int = 94
"""Highest atomic number with reference data (Pu)."""
D3_CUTOFF: float = 60.0 * Bohr
"""Default two-body cutoff, Å (60 bohr ≈ 31.75 Å, the ``dftd3`` package's default)."""
CN_CUTOFF: float = 40.0 * Bohr
"""Default cutoff of the CN count, Å (40 bohr ≈ 21.17 Å, the ``dftd3`` package's default)."""
CUTOFF_WIDTH: float = 2.0
"""Default width of the smooth switches below each cutoff, Å."""

_EV_A6 = Hartree * Bohr**6  # Hartree bohr⁶ -> eV Å⁶


class D3BJParams(NamedTuple):
    """Functional-dependent D3(BJ) parameters, as published.

    Attributes:
        s6: scaling of the C6 term (1 for all but double hybrids).
        s8: scaling of the C8 term.
        a1: scaling of the damping radius sqrt(C8/C6), dimensionless.
        a2: offset of the damping radius, **bohr** (the published unit).
    """

    s6: float
    s8: float
    a1: float
    a2: float


BJ_PARAMETERS: dict[str, D3BJParams] = {
    # Grimme, Ehrlich, Goerigk, JCC 32, 1456 (2011)
    "pbe": D3BJParams(1.0, 0.7875, 0.4289, 4.4407),
    "pbe0": D3BJParams(1.0, 1.2177, 0.4145, 4.8593),
    "revpbe": D3BJParams(1.0, 2.3550, 0.5238, 3.5016),
    "b3lyp": D3BJParams(1.0, 1.9889, 0.3981, 4.4211),
    "blyp": D3BJParams(1.0, 2.6996, 0.4298, 4.2359),
    "bp86": D3BJParams(1.0, 3.2822, 0.3946, 4.8516),
    "tpss": D3BJParams(1.0, 1.9435, 0.4535, 4.4752),
    "b97d": D3BJParams(1.0, 2.2609, 0.5545, 3.2297),
    "hf": D3BJParams(1.0, 0.9171, 0.3385, 2.8830),
    # Goerigk and Grimme, PCCP 13, 6670 (2011)
    "revpbe0": D3BJParams(1.0, 1.7588, 0.4679, 3.7619),
    "pbesol": D3BJParams(1.0, 2.9491, 0.4466, 6.1742),
    "tpssh": D3BJParams(1.0, 2.2382, 0.4529, 4.6550),
    "pw6b95": D3BJParams(1.0, 0.7257, 0.2076, 6.3750),
    "b2plyp": D3BJParams(0.64, 0.9147, 0.3065, 5.0570),
    # Grimme's D3 website (dftd3 program's table)
    "rpbe": D3BJParams(1.0, 0.8318, 0.1820, 4.0094),
    # Brandenburg et al., PRB 94, 115144 (2016); Ehlert et al., JCP 154, 061101 (2021)
    "scan": D3BJParams(1.0, 0.0, 0.5380, 5.4200),
    "r2scan": D3BJParams(1.0, 0.78981345, 0.49484001, 5.73083694),
}
"""D3(BJ) parameters by (lower-case) functional name, as in the ``dftd3`` package's table."""


def d3_bj_parameters(functional: str | D3BJParams) -> D3BJParams:
    """The D3(BJ) parameters of ``functional`` (case, '-', '_' and spaces ignored: "PBE0",
    "B97-D", "BP86"); a :class:`D3BJParams` passes through. ValueError naming the known
    functionals for any other name."""
    if isinstance(functional, D3BJParams):
        return functional
    key = "".join(c for c in str(functional).lower() if c not in "-_ ")
    if key not in BJ_PARAMETERS:
        raise ValueError(f"no D3(BJ) parameters for functional {functional!r}; known: "
                         f"{', '.join(BJ_PARAMETERS)} (or pass D3BJParams(s6, s8, a1, a2))")
    return BJ_PARAMETERS[key]


# --- reference data ---------------------------------------------------------------------------

class _Reference(NamedTuple):
    """Reference tables indexed by atomic number (row 0 and unused slots are placeholders).

    ref_valid (95, 5) bool: slot a of element Z holds a reference system.
    ref_cn (95, 5): its coordination number (0 in unused slots).
    ref_index (95, 5) int32: its row in ``c6`` (0 in unused slots).
    c6 (R, R): C6 between reference systems, Hartree bohr⁶.
    rc (95,): k2 × covalent radius, Å (NaN at Z = 0).
    sqrt_q (95,): sqrt(Q), bohr (NaN at Z = 0).
    """

    ref_valid: np.ndarray
    ref_cn: np.ndarray
    ref_index: np.ndarray
    c6: np.ndarray
    rc: np.ndarray
    sqrt_q: np.ndarray


@functools.cache
def _reference() -> _Reference:
    """The tables of ``data/d3_reference.npz``, read once (arrays only: no pickle)."""
    source = resources.files("so3krates.terms").joinpath("data", "d3_reference.npz")
    with resources.as_file(source) as path, np.load(path, allow_pickle=False) as data:
        count = data["ref_count"].astype(np.int32)
        ref_cn = data["ref_cn"].astype(np.float64)
        c6 = data["c6_ref"].astype(np.float64)
        rcov = data["rcov"].astype(np.float64)
        r4_over_r2 = data["r4_over_r2"].astype(np.float64)
    slots = np.arange(ref_cn.shape[1])
    valid = slots[None, :] < count[:, None]
    offset = np.concatenate([[0], np.cumsum(count)[:-1]])
    index = np.where(valid, offset[:, None] + slots[None, :], 0).astype(np.int32)
    sqrt_q = np.sqrt(0.5 * r4_over_r2 * np.sqrt(np.arange(len(count))))
    return _Reference(valid, np.where(valid, ref_cn, 0.0), index, c6, K2 * rcov, sqrt_q)


def check_elements(numbers) -> None:
    """ValueError naming the atomic numbers (host array) without D3 reference data (outside
    1–94)."""
    z = np.unique(np.asarray(numbers, dtype=int))
    missing = z[(z < 1) | (z > MAX_Z)]
    if missing.size:
        names = ", ".join(f"{chemical_symbols[k]} (Z={k})" if 0 < k < len(chemical_symbols)
                          else f"Z={k}" for k in missing)
        raise ValueError(f"no DFT-D3 reference data for {names}; D3 covers Z = 1-{MAX_Z} "
                         f"(H-{chemical_symbols[MAX_Z]})")


def _check_pairs(zi: jnp.ndarray, zj: jnp.ndarray, mask: jnp.ndarray) -> None:
    """Raise for real pairs with unknown elements when the inputs are concrete (under ``jit``
    such pairs give NaN instead)."""
    if any(isinstance(x, jax.core.Tracer) for x in (zi, zj, mask)):
        return
    real = np.asarray(mask, dtype=bool)
    check_elements(np.concatenate([np.asarray(zi)[real], np.asarray(zj)[real]]))


def _check_cutoff(cutoff: float | None, width: float) -> None:
    if cutoff is not None and not (cutoff > 0 and 0 <= width <= cutoff):
        raise ValueError(f"need cutoff > 0 and 0 <= cutoff_width <= cutoff, got {cutoff} "
                         f"and {width}")


def _take(table: np.ndarray, z: jnp.ndarray, dtype, fill) -> jnp.ndarray:
    """``table[z]``; ``fill`` (NaN, False) for atomic numbers outside the table, instead of JAX's
    default clamping to Pu (or wrapping of negative ones)."""
    z = jnp.where(z < 0, table.shape[0], z)
    return jnp.take(jnp.asarray(table, dtype), z, axis=0, mode="fill", fill_value=fill)


def _inside(r: jnp.ndarray, mask: jnp.ndarray, cutoff: float | None) -> jnp.ndarray:
    return mask if cutoff is None else mask & (r < cutoff)


def _switch(r: jnp.ndarray, cutoff: float | None, width: float) -> jnp.ndarray | float:
    """1 → 0 over [cutoff - width, cutoff]; 1 without a cutoff or with a hard one (width 0,
    applied by :func:`_inside`)."""
    if cutoff is None or width == 0:
        return 1.0
    return switch_function(r, cutoff - width, cutoff)


# --- coordination numbers and C6 ---------------------------------------------------------------

def coordination_numbers(r: jnp.ndarray, zi: jnp.ndarray, zj: jnp.ndarray, centers: jnp.ndarray,
                         n_atoms: int, mask: jnp.ndarray, neighbours: jnp.ndarray | None = None,
                         cutoff: float | None = CN_CUTOFF,
                         cutoff_width: float = CUTOFF_WIDTH) -> jnp.ndarray:
    """D3 coordination number of each atom, (N,) dimensionless.

    ``CN_i = Σ_j 1 / (1 + exp(-k1 (k2 (Rcov_i + Rcov_j) / r_ij - 1)))`` over the listed pairs,
    times the switch below ``cutoff``.

    Args:
        r: pair distances, (P,) Å (anything for padding pairs, 0 included).
        zi, zj: atomic numbers of the centre and neighbour atom, (P,) int.
        centers: index of each pair's centre atom, (P,) int.
        n_atoms: N, a static int.
        mask: True for real pairs, (P,) bool.
        neighbours: None for a full list (each pair listed both ways, counted for its centre);
            the neighbour indices (P,) for a half list (each pair once, counted for both atoms;
            a periodic image of the atom itself then counts twice, for S and -S, as it should).
        cutoff: Å, at most the pair list's cutoff (else CN jumps as pairs enter the list), or
            None to count every listed pair in full (molecules with all pairs listed).
        cutoff_width: width of the switch below ``cutoff``, Å; 0 truncates hard (``dftd3``).
    """
    _check_cutoff(cutoff, cutoff_width)
    _check_pairs(zi, zj, mask)
    inside = _inside(r, mask, cutoff)
    # Padding pairs (and pairs beyond the cutoff) are evaluated for an H-H pair at 1 Å, then
    # discarded: no NaN radius, 0/0 or infinite slope in the branch that `where` drops.
    rs = jnp.where(inside, r, 1.0)
    zi = jnp.where(inside, zi, 1)
    zj = jnp.where(inside, zj, 1)
    rc = _take(_reference().rc, zi, rs.dtype, jnp.nan) + _take(_reference().rc, zj, rs.dtype,
                                                                jnp.nan)
    count = jax.nn.sigmoid(K1 * (rc / rs - 1.0)) * _switch(rs, cutoff, cutoff_width)
    count = jnp.where(inside, count, 0.0)
    cn = jax.ops.segment_sum(count, centers, n_atoms)
    if neighbours is not None:
        cn = cn + jax.ops.segment_sum(count, neighbours, n_atoms)
    return cn


def reference_weights(z: jnp.ndarray, cn: jnp.ndarray) -> jnp.ndarray:
    """Gaussian weights of each atom's reference systems, (P, 5), each row summing to 1 over the
    element's references (0 in unused slots).

    ``w_a = exp(-k3 (CN - CN_a)²) / Σ_b exp(-k3 (CN - CN_b)²)``, evaluated as a softmax (largest
    exponent subtracted): far from every reference CN the plain quotient underflows to 0/0,
    the softmax goes to the nearest reference (``dftd3`` falls back to the highest-CN one, the
    same reference wherever CN ≥ 0). NaN for elements outside 1–94.

    Args:
        z: atomic numbers, (P,) int; cn: their coordination numbers, (P,).
    """
    ref = _reference()
    dtype = jnp.result_type(cn, jnp.float32)
    valid = _take(ref.ref_valid, z, bool, False)
    ref_cn = _take(ref.ref_cn, z, dtype, 0.0)
    logit = -K3 * (cn[:, None] - ref_cn) ** 2
    top = jax.lax.stop_gradient(jnp.max(jnp.where(valid, logit, -jnp.inf), axis=1,
                                        keepdims=True))
    # Unused slots get exactly 0 without exp() of their placeholder CN in any derivative.
    e = jnp.where(valid, jnp.exp(jnp.where(valid, logit - top, 0.0)), 0.0)
    return e / jnp.sum(e, axis=1, keepdims=True)


def _c6_hartree(zi: jnp.ndarray, zj: jnp.ndarray, cn_i: jnp.ndarray,
                cn_j: jnp.ndarray) -> jnp.ndarray:
    """C6 of each pair, (P,) Hartree bohr⁶."""
    ref = _reference()
    wi, wj = reference_weights(zi, cn_i), reference_weights(zj, cn_j)
    index = jnp.asarray(ref.ref_index)
    ri, rj = index[jnp.clip(zi, 0, MAX_Z)], index[jnp.clip(zj, 0, MAX_Z)]  # NaN via the weights
    block = jnp.asarray(ref.c6, wi.dtype)[ri[:, :, None], rj[:, None, :]]  # (P, 5, 5)
    return jnp.einsum("pa,pab,pb->p", wi, block, wj)


def c6_coefficients(zi: jnp.ndarray, zj: jnp.ndarray, cn_i: jnp.ndarray,
                    cn_j: jnp.ndarray) -> jnp.ndarray:
    """CN-dependent D3 C6 of each pair, (P,) eV Å⁶ (``Σ_ab w_ia w_jb C6_ref(a, b)``).

    Args:
        zi, zj: atomic numbers, (P,) int (1–94; NaN otherwise).
        cn_i, cn_j: their coordination numbers, (P,).
    """
    return _c6_hartree(zi, zj, cn_i, cn_j) * _EV_A6


# --- pair energy --------------------------------------------------------------------------------

def d3_pair_energy(r: jnp.ndarray, zi: jnp.ndarray, zj: jnp.ndarray, cn_i: jnp.ndarray,
                   cn_j: jnp.ndarray, mask: jnp.ndarray, params: D3BJParams | str,
                   cutoff: float | None = None,
                   cutoff_width: float = CUTOFF_WIDTH) -> jnp.ndarray:
    """D3(BJ) two-body energy of each listed pair, (P,) in eV (full pair energy, ≤ 0).

    Args:
        r: pair distances, (P,) Å (anything for padding pairs, 0 included).
        zi, zj: atomic numbers of the centre and neighbour atom, (P,) int.
        cn_i, cn_j: their coordination numbers (:func:`coordination_numbers`), (P,).
        mask: True for real pairs, (P,) bool.
        params: :class:`D3BJParams` or a functional's name (:func:`d3_bj_parameters`; names
            only outside ``jit``).
        cutoff: None (every listed pair at full strength) or Å: the energy is then multiplied by
            :func:`~so3krates.terms.coulomb.switch_function` from 1 at ``cutoff - cutoff_width``
            to 0 at ``cutoff`` (at most the pair list's cutoff).
        cutoff_width: width of the switch, Å; 0 truncates hard at ``cutoff`` (``dftd3``).
    """
    params = d3_bj_parameters(params)
    _check_cutoff(cutoff, cutoff_width)
    _check_pairs(zi, zj, mask)
    inside = _inside(r, mask, cutoff)
    # Padding pairs evaluated as an H-H pair at 1 Å with CN 0, then discarded (see above).
    rs = jnp.where(inside, r, 1.0)
    zi = jnp.where(inside, zi, 1)
    zj = jnp.where(inside, zj, 1)
    c6 = _c6_hartree(zi, zj, jnp.where(inside, cn_i, 0.0).astype(rs.dtype),
                     jnp.where(inside, cn_j, 0.0).astype(rs.dtype))
    sqrt_q = _reference().sqrt_q
    c8_over_c6 = 3.0 * _take(sqrt_q, zi, rs.dtype, jnp.nan) * _take(sqrt_q, zj, rs.dtype,
                                                                     jnp.nan)  # bohr²
    r0 = params.a1 * jnp.sqrt(c8_over_c6) + params.a2  # bohr
    r2, r02 = (rs / Bohr) ** 2, r0 * r0
    r6, r06 = r2 * r2 * r2, r02 * r02 * r02
    # Rational (BJ) damping: finite at r = 0, so no short-range cutoff is needed.
    e = -c6 * (params.s6 / (r6 + r06) + params.s8 * c8_over_c6 / (r6 * r2 + r06 * r02))
    e = e * Hartree * _switch(rs, cutoff, cutoff_width)
    return jnp.where(inside, e, 0.0)


# --- whole structures ---------------------------------------------------------------------------

def d3_energy_from_pairs(positions: jnp.ndarray, cell: jnp.ndarray, numbers: jnp.ndarray,
                         centers: jnp.ndarray, neighbours: jnp.ndarray, shifts: jnp.ndarray,
                         mask: jnp.ndarray, params: D3BJParams | str = "pbe",
                         cutoff: float | None = D3_CUTOFF, cn_cutoff: float | None = CN_CUTOFF,
                         cutoff_width: float = CUTOFF_WIDTH,
                         cn_cutoff_width: float = CUTOFF_WIDTH) -> jnp.ndarray:
    """D3(BJ) two-body energy () in eV of one structure from a *half* pair list; jittable and
    differentiable in ``positions`` and ``cell`` (forces, stress).

    Args:
        positions: (N, 3) Å; cell: (3, 3) lattice vectors as rows, Å (zeros for molecules);
        numbers: atomic numbers (N,) int.
        centers, neighbours, shifts: pairs (i, j, S), each once, r_ij = R_j - R_i + S @ cell:
            (P,), (P,), (P, 3) (``so3krates.neighbours.neighbour_list(..., half=True)``), with a
            list cutoff at least ``max(cutoff, cn_cutoff)``.
        mask: True for real pairs, (P,) bool.
        params, cutoff, cutoff_width: as for :func:`d3_pair_energy` (here with the default
            :data:`D3_CUTOFF`).
        cn_cutoff, cn_cutoff_width: ``cutoff`` and ``cutoff_width`` of
            :func:`coordination_numbers`.
    """
    vec = positions[neighbours] - positions[centers] + shifts.astype(positions.dtype) @ cell
    # |r| with no square root of 0 in the derivative of padding pairs.
    safe = jnp.where(mask[:, None], vec, 1.0)
    r = jnp.where(mask, jnp.sqrt(jnp.sum(safe * safe, axis=-1)), 1.0)
    zi, zj = numbers[centers], numbers[neighbours]
    cn = coordination_numbers(r, zi, zj, centers, positions.shape[0], mask, neighbours,
                              cn_cutoff, cn_cutoff_width)
    e = d3_pair_energy(r, zi, zj, cn[centers], cn[neighbours], mask, params, cutoff,
                       cutoff_width)
    return jnp.sum(e)


_energy_from_pairs_jit = jax.jit(d3_energy_from_pairs, static_argnames=(
    "cutoff", "cn_cutoff", "cutoff_width", "cn_cutoff_width"))


def d3_energy(positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray | None = None,
              pbc: np.ndarray | None = None, functional: str | D3BJParams = "pbe",
              cutoff: float | None = D3_CUTOFF, cn_cutoff: float | None = CN_CUTOFF,
              cutoff_width: float = CUTOFF_WIDTH,
              cn_cutoff_width: float = CUTOFF_WIDTH) -> jnp.ndarray:
    """Total D3(BJ) two-body dispersion energy () in eV of one structure, its pair list built
    on the host (vesin).

    Args:
        positions: (N, 3) Å; numbers: atomic numbers (N,).
        cell: (3, 3) lattice vectors as rows, Å; None for a molecule.
        pbc: periodic directions (3,) bool; default: all three when ``cell`` is given.
        functional: a name known to :func:`d3_bj_parameters`, or :class:`D3BJParams`.
        cutoff, cn_cutoff: two-body and CN cutoffs, Å; None (molecules only) takes every pair.
        cutoff_width, cn_cutoff_width: their switch widths, Å (0: hard cutoffs, as ``dftd3``).
    """
    params = d3_bj_parameters(functional)
    numbers = np.asarray(numbers, dtype=np.int32)
    check_elements(numbers)
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
    pbc = (np.full(3, cell.any()) if pbc is None else np.asarray(pbc, dtype=bool).reshape(3))
    if pbc.any() and (cutoff is None or cn_cutoff is None):
        raise ValueError("a periodic structure needs finite cutoff and cn_cutoff")
    list_cutoff = None if cutoff is None or cn_cutoff is None else max(cutoff, cn_cutoff)
    nl = (long_range_list(positions, cell, pbc, None) if list_cutoff is None
          else neighbour_list(positions, cell, pbc, list_cutoff, half=True))
    return _energy_from_pairs_jit(
        jnp.asarray(positions), jnp.asarray(cell), jnp.asarray(numbers), nl.centers,
        nl.neighbours, nl.shifts, np.ones(len(nl.centers), bool), params, cutoff=cutoff,
        cn_cutoff=cn_cutoff, cutoff_width=cutoff_width, cn_cutoff_width=cn_cutoff_width)
