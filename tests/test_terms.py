"""Physical pair terms (ZBL repulsion, damped Coulomb, TS dispersion) in float64.

Each term is checked against an independent evaluation of its formula (plain numpy here, ASE's
own TS calculator for dispersion), for its limits (cutoffs, r = 0, the pure 1/r tail), and for
what the potential needs of it: forces equal to central finite differences, exactly zero
padding pairs with no NaN in reverse- or forward-mode derivatives, and jit.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.idealgas import IdealGas
from ase.calculators.vdwcorrection import vdWDB_alphaC6, vdWTkatchenko09prl
from ase.data import chemical_symbols
from ase.units import Bohr, Hartree

import so3krates  # noqa: F401  (float64)
from so3krates.terms.coulomb import (K_E, conserve_charge, coulomb_pair_energy, dipole_moment,
                                     switch_function)
from so3krates.terms.dispersion import R0_FREE, free_atom_parameters, ts_pair_energy
from so3krates.terms.zbl import screening_function, zbl_pair_energy

EPS = np.finfo(np.float64).eps


# --- a small cluster with padding, evaluated through positions ---------------------------------

NUMBERS = np.array([6, 8, 1, 6, 7, 0])  # the last atom is padding
CHARGES = np.array([0.4, -0.7, 0.25, -0.15, 0.2, 0.0])
RATIOS = np.array([0.85, 0.95, 0.6, 0.8, 0.9, 0.0])
POSITIONS = np.array([[0.0, 0.0, 0.0], [0.55, 0.1, 0.0], [0.2, 1.2, -0.3], [1.9, 0.8, 0.4],
                      [-1.6, -2.4, 2.1], [0.0, 0.0, 0.0]])


def cluster_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full list over the 5 real atoms, then 3 padding pairs on the padding atom."""
    i, j = np.nonzero(~np.eye(5, dtype=bool))
    pad = np.full(3, 5)
    return (np.concatenate([i, pad]), np.concatenate([j, pad]),
            np.concatenate([np.ones(i.size, bool), np.zeros(3, bool)]))


def safe_distances(positions, centers, neighbours, mask):
    """|R_j - R_i|, 0 for padding pairs, with a NaN-free derivative (as the caller must)."""
    v = positions[neighbours] - positions[centers]
    r2 = jnp.where(mask, jnp.sum(v * v, axis=-1), 1.0)
    return jnp.where(mask, jnp.sqrt(r2), 0.0)


def cluster_energy(pair_fn):
    """``E(positions)``: half the sum of the full pair energies over the cluster's full list."""
    centers, neighbours, mask = cluster_pairs()

    def energy(positions):
        r = safe_distances(positions, centers, neighbours, mask)
        return 0.5 * jnp.sum(pair_fn(r, centers, neighbours, mask))

    return energy


# Each term on the cluster: ``fn(r, centers, neighbours, mask, values)``, ``values`` the
# per-atom input a network would predict (charges, Hirshfeld ratios; none for ZBL).


def zbl_fn(r, i, j, mask, values=None):
    return zbl_pair_energy(r, NUMBERS[i], NUMBERS[j], 1.8, mask)


def coulomb_fn(r, i, j, mask, values=CHARGES):
    return coulomb_pair_energy(r, values[i], values[j], mask, 0.6, 1.5, long_cutoff=3.2)


def ts_fn(r, i, j, mask, values=RATIOS):
    return ts_pair_energy(r, NUMBERS[i], NUMBERS[j], values[i], values[j], mask, cutoff=4.0,
                          cutoff_width=1.5)


TERMS = {"zbl": zbl_fn, "coulomb": coulomb_fn, "ts": ts_fn}


def energies_and_slopes(pair_fn, r) -> tuple[np.ndarray, np.ndarray]:
    """``(E(r), dE/dr)`` per pair of an elementwise pair function, in one compiled call (op by
    op, JAX would compile every primitive on its own: seconds on a shared CPU)."""
    fn = jax.jit(lambda r: (pair_fn(r), jax.grad(lambda x: jnp.sum(pair_fn(x)))(r)))
    e, slope = fn(jnp.asarray(r, jnp.float64))
    return np.asarray(e), np.asarray(slope)


# The ends of each term's regimes in TERMS: switches and cutoffs.
REGIMES = {"zbl": [1.8], "coulomb": [0.6, 1.5, 3.2], "ts": [2.5, 4.0]}


def test_cluster_spans_every_regime():
    """The cluster has pairs in every regime of each term (else the force checks below would
    not test the switches and cutoffs)."""
    centers, neighbours, mask = cluster_pairs()
    r = np.linalg.norm(POSITIONS[neighbours] - POSITIONS[centers], axis=1)[mask]
    for ends in REGIMES.values():
        counts = np.bincount(np.searchsorted(ends, r), minlength=len(ends) + 1)
        assert np.all(counts > 0), (ends, counts)


@pytest.mark.parametrize("term", TERMS)
def test_forces_match_finite_differences(term):
    energy = jax.jit(cluster_energy(TERMS[term]))
    forces = -np.asarray(jax.grad(energy)(jnp.asarray(POSITIONS)))
    h = 1e-5
    fd = np.zeros_like(POSITIONS)
    for a in range(5):
        for k in range(3):
            plus, minus = POSITIONS.copy(), POSITIONS.copy()
            plus[a, k] += h
            minus[a, k] -= h
            fd[a, k] = -(float(energy(plus)) - float(energy(minus))) / (2 * h)
    assert np.abs(forces).max() > 1e-3  # a non-trivial check
    np.testing.assert_allclose(forces, fd, rtol=0, atol=1e-7 * np.abs(forces).max())
    assert np.all(forces[5] == 0.0)  # the padding atom


@pytest.mark.parametrize("term", TERMS)
def test_padding_pairs_zero_and_nan_free_both_modes(term):
    """Masked pairs at r = 0, negative, huge or NaN give exactly 0; reverse- and forward-mode
    derivatives with respect to r agree and are NaN-free; the energy jits; the Hessian in the
    positions (forward over reverse) is finite and symmetric."""
    centers, neighbours, mask = cluster_pairs()
    pair_fn = TERMS[term]
    r = np.linalg.norm(POSITIONS[neighbours] - POSITIONS[centers], axis=1)
    r[~mask] = [0.0, -1.0, np.nan]
    fn = jax.jit(lambda r: pair_fn(r, centers, neighbours, mask))
    e = np.asarray(fn(r))
    assert np.all(e[~mask] == 0.0) and np.all(np.isfinite(e[mask])) and np.any(e[mask] != 0.0)
    r[~mask] = [0.0, 1e300, np.nan]
    rev = np.asarray(jax.jacrev(fn)(jnp.asarray(r)))
    fwd = np.asarray(jax.jacfwd(fn)(jnp.asarray(r)))
    assert np.all(np.isfinite(rev)) and np.all(np.isfinite(fwd))
    np.testing.assert_allclose(fwd, rev, rtol=1e-12, atol=0)
    assert np.all(rev[~mask] == 0.0) and np.all(rev[:, ~mask] == 0.0)
    energy = cluster_energy(pair_fn)
    hess = np.asarray(jax.jit(jax.hessian(energy))(jnp.asarray(POSITIONS)))
    assert np.all(np.isfinite(hess))
    hess = hess.reshape(18, 18)
    np.testing.assert_allclose(hess, hess.T, rtol=0, atol=1e-10 * np.abs(hess).max())
    # ... and equal to central differences of the reverse-mode gradient along one direction.
    grad = jax.jit(jax.grad(energy))
    v = np.random.default_rng(2).normal(size=POSITIONS.shape)
    v[5] = 0.0
    h = 1e-5
    fd = (np.asarray(grad(POSITIONS + h * v)) - np.asarray(grad(POSITIONS - h * v))) / (2 * h)
    np.testing.assert_allclose(hess @ v.ravel(), fd.ravel(), rtol=0,
                               atol=1e-6 * np.abs(fd).max())


@pytest.mark.parametrize("term", ["coulomb", "ts"])
def test_atom_value_gradients(term):
    """Charges and ratios come from the network, which is trained through these energies: their
    derivatives (both modes) are NaN-free with the padding atom's value 0 (a ratio of 0 has an
    infinite cube-root slope) and equal central finite differences."""
    centers, neighbours, mask = cluster_pairs()
    r = safe_distances(jnp.asarray(POSITIONS), centers, neighbours, mask)
    values = CHARGES if term == "coulomb" else RATIOS
    energy = jax.jit(lambda v: 0.5 * jnp.sum(TERMS[term](r, centers, neighbours, mask, v)))
    rev = np.asarray(jax.jit(jax.grad(energy))(jnp.asarray(values)))
    fwd = np.asarray(jax.jit(jax.jacfwd(energy))(jnp.asarray(values)))
    assert np.all(np.isfinite(rev)) and rev[5] == 0.0
    np.testing.assert_allclose(fwd, rev, rtol=1e-12, atol=0)
    h = 1e-6
    fd = [(float(energy(values + h * np.eye(6)[a])) - float(energy(values - h * np.eye(6)[a])))
          / (2 * h) for a in range(5)]
    assert np.abs(rev).max() > 1e-4
    np.testing.assert_allclose(rev[:5], fd, rtol=0, atol=1e-7 * np.abs(rev).max())


# --- ZBL ---------------------------------------------------------------------------------------


def zbl_numpy(r: float, zi: int, zj: int, cutoff: float) -> float:
    """The ZBL formula written out, with the quintic switch."""
    a = 0.8854 * Bohr / (zi**0.23 + zj**0.23)
    x = r / a
    phi = (0.18175 * np.exp(-3.19980 * x) + 0.50986 * np.exp(-0.94229 * x)
           + 0.28022 * np.exp(-0.40290 * x) + 0.02817 * np.exp(-0.20162 * x))
    t = r / cutoff
    switch = 1 - 10 * t**3 + 15 * t**4 - 6 * t**5
    return Hartree * Bohr * zi * zj / r * phi * switch


def test_zbl_reference_values():
    cases = [(0.7, 6, 8), (0.35, 1, 1), (1.4, 29, 29), (0.05, 6, 6)]
    r, zi, zj = (np.array(c) for c in zip(*cases))
    e = np.asarray(zbl_pair_energy(jnp.asarray(r), zi, zj, 2.0, np.ones(4, bool)))
    expected = [zbl_numpy(*c, 2.0) for c in cases]
    np.testing.assert_allclose(e, expected, rtol=1e-13)
    # At r → 0 the screening is 1: the bare nuclear repulsion.
    np.testing.assert_allclose(screening_function(jnp.zeros(1)), 1.0, rtol=1e-15)


def test_zbl_compression_rises_monotonically():
    """C–C pushed from 2 Å to 0.2 Å: the energy rises at every step, the force pushes apart."""
    r = jnp.linspace(2.0, 0.2, 400)
    ones = jnp.ones(r.shape, bool)
    fn = lambda r: zbl_pair_energy(r, jnp.full(r.shape, 6), jnp.full(r.shape, 6), 2.5, ones)
    e, de_dr = energies_and_slopes(fn, r)
    assert np.all(np.diff(e) > 0)
    assert e[0] > 0 and 500 < e[-1] < 1500
    assert np.all(de_dr < 0)


def test_zbl_zero_at_and_beyond_cutoff():
    rc = 1.5
    r = jnp.array([rc, rc + 1e-12, 2.0, 1e200, rc - 1e-3, rc - 1e-2])
    fn = lambda r: zbl_pair_energy(r, jnp.full(r.shape, 8), jnp.full(r.shape, 8), rc,
                                   jnp.ones(r.shape, bool))
    e, de_dr = energies_and_slopes(fn, r)
    assert np.all(e[:4] == 0.0)
    # C² at the cutoff: the energy goes as (rc - r)³, the force as (rc - r)².
    scale = zbl_numpy(rc / 2, 8, 8, np.inf)
    assert 0 < e[4] < 1e-8 * scale and 0 < e[5] < 1e-5 * scale
    assert np.all(de_dr[:4] == 0.0) and abs(de_dr[4]) < 1e-5 * scale


# --- Coulomb -----------------------------------------------------------------------------------


def test_conserve_charge_sums_to_total_charge():
    """Three structures (3, 5 and 1 atoms) and a padding structure holding the padding atoms."""
    rng = np.random.default_rng(0)
    structure = np.array([0, 0, 0, 1, 1, 1, 1, 1, 2, 3, 3])
    atom_mask = structure < 3
    total = np.array([1.0, -2.0, 0.0, 0.0])
    raw = rng.normal(size=structure.size) * 3.0
    q = np.asarray(jax.jit(conserve_charge)(raw, structure, total, atom_mask))
    sums = np.bincount(structure, q, minlength=4)
    np.testing.assert_allclose(sums, total, rtol=0, atol=8 * EPS * np.abs(raw).sum())
    assert np.all(q[~atom_mask] == 0.0)
    # The correction is one constant per structure.
    for s in range(3):
        shift = (q - raw)[structure == s]
        np.testing.assert_allclose(shift, shift[0], rtol=0, atol=1e-14)


def test_dipole_moment():
    rng = np.random.default_rng(1)
    positions = rng.normal(size=(7, 3))
    structure = np.array([0, 0, 0, 1, 1, 1, 2])
    charges = np.asarray(conserve_charge(rng.normal(size=7), structure, np.array([0.0, 1.0, 0.0]),
                                         structure < 2))
    mu = np.asarray(dipole_moment(positions, charges, structure, 3))
    expected = [(charges[structure == s, None] * positions[structure == s]).sum(0)
                for s in range(3)]
    np.testing.assert_allclose(mu, expected, rtol=1e-14, atol=1e-14)
    # Shifting the origin by t: neutral structures keep μ, a charge Q shifts it by -Q t.
    t = np.array([3.0, -1.0, 2.0])
    moved = np.asarray(dipole_moment(positions - t, charges, structure, 3))
    np.testing.assert_allclose(moved[0], mu[0], atol=1e-12)
    np.testing.assert_allclose(moved[1], mu[1] - 1.0 * t, atol=1e-12)
    assert np.all(mu[2] == 0.0)


@partial(jax.jit, static_argnames=("on", "off", "long_cutoff"))
def coulomb(r, on=0.5, off=2.0, long_cutoff=None):
    """Charges 0.7 and -1.3 e at distances r."""
    r = jnp.atleast_1d(jnp.asarray(r, jnp.float64))
    ones = jnp.ones(r.shape)
    return coulomb_pair_energy(r, 0.7 * ones, -1.3 * ones, jnp.ones(r.shape, bool), on, off,
                               long_cutoff)


def test_coulomb_is_exact_beyond_switch_and_damped_below():
    r = np.array([2.0, 2.5, 7.0, 40.0])
    np.testing.assert_allclose(coulomb(r), K_E * 0.7 * -1.3 / r, rtol=1e-12, atol=0)
    r = np.array([0.0, 0.2, 0.5])
    np.testing.assert_allclose(coulomb(r), K_E * 0.7 * -1.3 / np.sqrt(r**2 + 1), rtol=1e-12)
    # In between: the mixture, with the switch's C∞ step.
    r = np.array([0.8, 1.25, 1.9])
    x = (r - 0.5) / 1.5
    f = np.exp(-1 / (1 - x)) / (np.exp(-1 / x) + np.exp(-1 / (1 - x)))
    np.testing.assert_allclose(switch_function(jnp.asarray(r), 0.5, 2.0), f, rtol=1e-13)
    expected = K_E * 0.7 * -1.3 * (f / np.sqrt(r**2 + 1) + (1 - f) / r)
    np.testing.assert_allclose(coulomb(r), expected, rtol=1e-13)
    # With a long cutoff: the shifted-force 1/r between the switch and rc.
    r = np.array([2.0, 5.0, 9.0])
    np.testing.assert_allclose(coulomb(r, long_cutoff=10.0),
                               K_E * 0.7 * -1.3 * (1 / r + r / 100 - 0.2), rtol=1e-12)


def test_coulomb_long_cutoff_continuous():
    """Energy and force vanish on both sides of rc (a pair crossing it feels no jump)."""
    rc = 9.0
    r = jnp.array([rc - 1e-8, rc, rc + 1e-8, rc + 3.0])
    e, de_dr = energies_and_slopes(partial(coulomb, long_cutoff=rc), r)
    assert np.all(np.abs(e) < 1e-9) and np.all(np.abs(de_dr) < 1e-9)
    assert np.all(e[1:] == 0.0)
    # ... while just inside, the pair still interacts.
    assert abs(float(coulomb(rc - 1.0, long_cutoff=rc)[0])) > 1e-3


@pytest.mark.parametrize("on", [0.0, 0.5])
@pytest.mark.parametrize("long_cutoff", [None, 6.0])
def test_coulomb_finite_at_zero_distance(on, long_cutoff):
    r = jnp.array([0.0, 1e-300, 0.3])
    fn = partial(coulomb, on=on, long_cutoff=long_cutoff)
    e, de_dr = energies_and_slopes(fn, r)
    assert np.all(np.isfinite(e)) and np.all(np.isfinite(de_dr))
    shift = 0.0 if long_cutoff is None else (2 * 36 + 1) / 37**1.5
    np.testing.assert_allclose(e[0], K_E * 0.7 * -1.3 * (1 - shift), rtol=1e-14)
    # d/dr of 1/sqrt(r² + 1) is 0 at r = 0; the shifted form adds rc / (rc² + 1)^(3/2).
    slope = 0.0 if long_cutoff is None else K_E * 0.7 * -1.3 * 6.0 / 37**1.5
    np.testing.assert_allclose(de_dr[:2], slope, rtol=0, atol=1e-14)
    fwd = np.asarray(jax.jit(jax.jacfwd(fn))(r))
    np.testing.assert_allclose(np.diag(fwd), de_dr, rtol=1e-14, atol=1e-14)


# --- TS dispersion -----------------------------------------------------------------------------


class FixedRatios:
    """Stand-in for ASE's Hirshfeld partitioning: fixed effective-volume ratios."""

    def __init__(self, ratios):
        self.ratios = list(ratios)

    def initialize(self):
        pass

    def get_effective_volume_ratios(self):
        return self.ratios


class ZeroPBE(IdealGas):
    """ASE's zero-energy calculator, claiming PBE (ASE's TS picks sR from the functional) and
    reporting the free energy too (ASE's TS asks for it)."""

    implemented_properties = [*IdealGas.implemented_properties, "free_energy"]

    def calculate(self, *args, **kwargs):
        super().calculate(*args, **kwargs)
        self.results["free_energy"] = 0.0

    def get_xc_functional(self):
        return "PBE"


def ase_ts(atoms, ratios, table=vdWDB_alphaC6):
    """Energy and forces of ASE's TS correction (molecule: all pairs, no cutoff; PBE sR 0.94,
    d 20). The R0 are handed over explicitly: ASE has no TS radii (its default would be
    Grimme's D2 radii, and fails with vdwradii=None)."""
    calc = vdWTkatchenko09prl(hirshfeld=FixedRatios(ratios), calculator=ZeroPBE(),
                              vdwradii=list(R0_FREE[atoms.numbers]), vdWDB_alphaC6=table)
    atoms = atoms.copy()
    atoms.calc = calc
    assert calc.sR == 0.94 and calc.d == 20
    return atoms.get_potential_energy(), atoms.get_forces()


def ts_total(numbers, ratios):
    n = len(numbers)
    i, j = np.nonzero(~np.eye(n, dtype=bool))
    mask = np.ones(i.size, bool)

    def energy(positions):
        r = safe_distances(positions, i, j, mask)
        return 0.5 * jnp.sum(ts_pair_energy(r, numbers[i], numbers[j], ratios[i], ratios[j],
                                            mask))

    return energy


@pytest.mark.parametrize("case", ["same ratio", "per-element ratios"])
def test_ts_matches_ase(case):
    """Ethanol against ``ase.calculators.vdwcorrection.vdWTkatchenko09prl``.

    ASE mixes C6 with the *free* polarizabilities, TS 2009 (and this module) with the
    effective ones (α_i = h_i α0_i); both agree when every atom has the same ratio. With one
    ratio per element, handing ASE the effective α0 of each element gives TS's mixing too."""
    atoms = molecule("CH3CH2OH")
    atoms.positions *= 1.05  # off the equilibrium, so that no force is ~0 by symmetry
    if case == "same ratio":
        ratios = np.full(len(atoms), 0.8)
        table = vdWDB_alphaC6
    else:
        per_element = {"C": 0.85, "O": 0.92, "H": 0.63}
        ratios = np.array([per_element[s] for s in atoms.get_chemical_symbols()])
        table = {s: [vdWDB_alphaC6[s][0] * h, vdWDB_alphaC6[s][1]]
                 for s, h in per_element.items()}
    e_ase, f_ase = ase_ts(atoms, ratios, table)
    energy = ts_total(atoms.numbers, ratios)
    e, grad = jax.jit(jax.value_and_grad(energy))(jnp.asarray(atoms.positions))
    e, forces = float(e), -np.asarray(grad)
    assert e < -0.01
    np.testing.assert_allclose(e, e_ase, rtol=1e-12)
    np.testing.assert_allclose(forces, f_ase, rtol=0, atol=1e-11)


def test_ts_matches_formula_with_unequal_ratios():
    """Ratios that differ within one element: the formula as written (effective α, C6, R0)."""
    rng = np.random.default_rng(3)
    zi = np.array([6, 6, 1, 8, 29, 6])
    zj = np.array([6, 1, 1, 7, 8, 6])
    hi, hj = rng.uniform(0.5, 1.1, size=(2, 6))
    r = np.array([3.1, 2.4, 1.9, 3.6, 2.2, 6.0])
    ts = jax.jit(ts_pair_energy)
    e = np.asarray(ts(jnp.asarray(r), zi, zj, hi, hj, np.ones(6, bool)))
    (ai, ci, ri), (aj, cj, rj) = free_atom_parameters(zi), free_atom_parameters(zj)
    ai, ci, ri = hi * ai, hi**2 * ci, np.cbrt(hi) * ri
    aj, cj, rj = hj * aj, hj**2 * cj, np.cbrt(hj) * rj
    c6 = 2 * ci * cj / (aj / ai * ci + ai / aj * cj)
    f = 1 / (1 + np.exp(-20.0 * (r / (0.94 * (ri + rj)) - 1)))
    np.testing.assert_allclose(e, -f * c6 / r**6, rtol=1e-13)
    # Symmetric in the two atoms of a pair (both listings carry the same energy).
    swapped = ts(jnp.asarray(r), zj, zi, hj, hi, np.ones(6, bool))
    np.testing.assert_allclose(swapped, e, rtol=1e-14)


def test_ts_free_atom_data():
    """ASE's α0 and C6 in Å³ and eV Å⁶; R0 from α0 within 2.5 % of the TS 2009 table."""
    alpha, c6, r0 = free_atom_parameters([1, 6, 7, 8])
    np.testing.assert_allclose(alpha, np.array([4.5, 12.0, 7.4, 5.4]) * Bohr**3, rtol=1e-14)
    np.testing.assert_allclose(c6, np.array([6.5, 46.6, 24.2, 15.6]) * Hartree * Bohr**6,
                               rtol=1e-14)
    np.testing.assert_allclose(r0 / Bohr, [3.10, 3.59, 3.34, 3.19], rtol=0.025)
    with pytest.raises(ValueError, match=r"K \(Z=19\)"):
        ts_pair_energy(jnp.array([3.0]), np.array([6]), np.array([19]), np.ones(1), np.ones(1),
                       np.ones(1, bool))
    # Padding pairs may carry Z = 0 (no data) without complaint.
    e = ts_pair_energy(jnp.array([3.0, 0.0]), np.array([6, 0]), np.array([6, 0]), np.ones(2),
                       np.array([1.0, 0.0]), np.array([True, False]))
    assert float(e[1]) == 0.0 and float(e[0]) < 0
    assert chemical_symbols[19] == "K"


def test_ts_cutoff_switch():
    """Below ``cutoff - cutoff_width`` unchanged; 0 at and beyond the cutoff; smooth across."""
    rc, width = 8.0, 2.0
    r = jnp.array([3.0, 5.99, 7.0, rc - 1e-4, rc, rc + 1e-9, 20.0])
    n = r.shape[0]
    args = (jnp.full(n, 6), jnp.full(n, 8), jnp.full(n, 0.9), jnp.full(n, 0.8),
            jnp.ones(n, bool))
    fn = lambda cutoff: lambda x: ts_pair_energy(x, *args, cutoff=cutoff, cutoff_width=width)
    full, _ = energies_and_slopes(fn(None), r)
    cut, de_dr = energies_and_slopes(fn(rc), r)
    np.testing.assert_allclose(cut[:2], full[:2], rtol=1e-14)
    assert full[2] < cut[2] < 0
    assert np.all(cut[4:] == 0.0) and abs(cut[3]) < 1e-12
    assert np.all(de_dr[4:] == 0.0) and abs(de_dr[3]) < 1e-12
