"""The Ewald sum of periodic point charges (float64).

Anchors: Madelung constants of five ionic crystals; independence of the splitting parameter
(neutral and charged cells); a brute-force lattice sum over whole cells; forces and the
strain stress of ``so3krates.potential.derive`` against finite differences; per-atom energies
that sum to the total; padding that changes nothing and leaks no NaN into derivatives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

import so3krates  # noqa: F401  (enables float64)
from so3krates.neighbours import neighbour_list
from so3krates.potential import derive
from so3krates.terms.ewald import (COULOMB_CONSTANT, ewald_atomic_energies, ewald_energy,
                                   ewald_parameters)

TRICLINIC = np.array([[4.3, 0.0, 0.0], [1.1, 4.0, 0.0], [-0.7, 0.6, 4.6]])


def random_cell(n: int, seed: int, neutral: bool = True):
    """``(positions (n, 3), charges (n,), cell)``: random fractional positions in
    ``TRICLINIC``, charges of order one (shifted to a neutral sum if ``neutral``)."""
    rng = np.random.default_rng(seed)
    positions = rng.uniform(size=(n, 3)) @ TRICLINIC
    charges = rng.normal(size=n)
    return positions, (charges - charges.mean() if neutral else charges), TRICLINIC.copy()


def energy_args(positions, cell, real_cutoff: float, accuracy: float):
    """The arguments after ``charges`` of ``ewald_atomic_energies`` past the cell: list,
    masks and parameters for one structure."""
    nl = neighbour_list(positions, cell, np.ones(3, bool), real_cutoff)
    params = ewald_parameters(cell, real_cutoff, accuracy)
    return (nl.centers, nl.neighbours, nl.shifts, np.ones(len(nl.centers), bool),
            np.ones(len(positions), bool), params.alpha, params.kvectors)


def atomic_fn(positions, cell, charges, *args):
    """The ``energy_fn(positions, cell, *args)`` shape of ``so3krates.potential``."""
    return ewald_atomic_energies(positions, charges, cell, *args)


@pytest.mark.parametrize(
    "name, atoms, charges, distance, units, reference",
    [
        # E per formula unit = -M |z+ z-| k_e e² / d, d the nearest cation-anion distance;
        # ``units`` = formula units in the cell times |z+ z-|.
        ("NaCl", bulk("NaCl", "rocksalt", a=5.64), [1, -1], 5.64 / 2, 1, 1.747564594633),
        ("CsCl", bulk("CsCl", "cesiumchloride", a=4.12), [1, -1], 4.12 * 3**0.5 / 2, 1,
         1.762674773071),
        ("ZnS", bulk("ZnS", "zincblende", a=5.41), [1, -1], 5.41 * 3**0.5 / 4, 1,
         1.638055053389),
        # Ca²⁺ F⁻ F⁻: |z+ z-| = 2; the tabulated 2.51939 has five decimals.
        ("CaF2", bulk("CaF2", "fluorite", a=5.46), [2, -1, -1], 5.46 * 3**0.5 / 4, 2, 2.51939),
        # ideal wurtzite (c/a = √(8/3), u = 3/8), two formula units, charges ±1; d = u c.
        ("wurtzite", bulk("ZnS", "wurtzite", a=3.82, c=3.82 * (8 / 3) ** 0.5, u=3 / 8),
         [1, -1, 1, -1], 3 / 8 * 3.82 * (8 / 3) ** 0.5, 2, 1.641321627),
    ],
)
def test_madelung_constants(name, atoms, charges, distance, units, reference):
    energy = float(ewald_energy(atoms.positions, charges, atoms.cell[:], 8.0, 1e-10))
    madelung = -energy * distance / (COULOMB_CONSTANT * units)
    # 8 decimals where the reference has them (ten-digit literature values), else its own.
    digits = 5 if name == "CaF2" else 8
    assert madelung == pytest.approx(reference, abs=10.0**-digits), name


@pytest.mark.parametrize("neutral", [True, False], ids=["neutral", "charged_background"])
def test_energy_is_independent_of_alpha(neutral):
    positions, charges, cell = random_cell(8, seed=0, neutral=neutral)
    tight, loose = ewald_parameters(cell, 4.0, 1e-12), ewald_parameters(cell, 9.0, 1e-12)
    assert tight.alpha > 2 * loose.alpha  # two quite different splittings
    e1 = float(ewald_energy(positions, charges, cell, 4.0, 1e-12))
    e2 = float(ewald_energy(positions, charges, cell, 9.0, 1e-12))
    assert abs(e1) > 1.0
    assert e1 == pytest.approx(e2, rel=1e-9, abs=0.0)


def test_equals_brute_force_lattice_sum():
    """½ Σ over whole-cell translations L, |L| <= R, of q_i q_j / |R_j - R_i + L|.

    The cell's charges are made neutral, dipole- and quadrupole-free (projected out of a
    random draw), so two cells interact as 1/|L|⁷ at long range: the sum converges
    absolutely (the tail beyond R falls as R⁻⁴), with no surface term, to the Ewald sum
    with any boundary condition."""
    rng = np.random.default_rng(1)
    cell = TRICLINIC
    positions = rng.uniform(size=(14, 3)) @ cell
    moments = np.column_stack([np.ones(14), positions,
                               positions[:, [0, 1, 2, 0, 1, 2]] * positions[:, [0, 1, 2, 1, 2, 0]]])
    charges = rng.normal(size=14)
    charges -= moments @ np.linalg.lstsq(moments, charges, rcond=None)[0]
    assert np.abs(moments.T @ charges).max() < 1e-12 and np.abs(charges).max() > 0.5

    radius = 60.0
    n = int(radius / 3.5) + 2  # plane spacings of the cell are above 3.5 Å
    grid = np.arange(-n, n + 1)
    lattice = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), -1).reshape(-1, 3) @ cell
    lattice = lattice[np.linalg.norm(lattice, axis=1) <= radius]
    direct = 0.0
    for i in range(14):  # one row of the pair matrix at a time: little memory
        r = np.linalg.norm(positions[None, :, :] - positions[i] + lattice[:, None, :], axis=-1)
        r[np.linalg.norm(lattice, axis=1) == 0, i] = np.inf  # no self-interaction
        direct += 0.5 * charges[i] * np.sum(charges / r)
    direct *= COULOMB_CONSTANT

    ewald = float(ewald_energy(positions, charges, cell, 8.0, 1e-12))
    assert abs(ewald) > 1.0
    assert ewald == pytest.approx(direct, rel=1e-7, abs=0.0)


def rattled_cell():
    positions, charges, cell = random_cell(8, seed=3)
    cell = cell + 0.1 * np.random.default_rng(4).normal(size=(3, 3))
    return positions, charges, cell


def test_forces_and_stress_equal_finite_differences():
    positions, charges, cell = rattled_cell()
    args = energy_args(positions, cell, 6.0, 1e-8)
    derived = jax.jit(derive(atomic_fn, virial=True))(
        jnp.asarray(positions), jnp.asarray(cell), jnp.asarray(charges), *args)
    energy = jax.jit(lambda r, c: jnp.sum(atomic_fn(r, c, jnp.asarray(charges), *args)))

    h = 1e-4
    fd_forces = np.zeros_like(positions)
    for i in range(len(positions)):
        for a in range(3):
            d = np.zeros_like(positions)
            d[i, a] = h
            fd_forces[i, a] = -(energy(positions + d, cell) - energy(positions - d, cell)) / (2 * h)
    assert np.abs(fd_forces).max() > 0.1
    np.testing.assert_allclose(np.asarray(derived.forces), fd_forces, rtol=0.0, atol=1e-7)

    # Symmetric strain of positions and cell together; stress = virial / volume, ASE sign.
    h, volume = 1e-5, abs(np.linalg.det(cell))
    fd_stress = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            d = np.zeros((3, 3))
            d[a, b] += 0.5 * h
            d[b, a] += 0.5 * h
            plus, minus = np.eye(3) + d, np.eye(3) - d
            fd_stress[a, b] = fd_stress[b, a] = (
                energy(positions @ plus, cell @ plus) - energy(positions @ minus, cell @ minus)
            ) / (2 * h * volume)
    stress = np.asarray(derived.virial) / volume
    assert np.abs(fd_stress).max() > 1e-3
    np.testing.assert_allclose(stress, fd_stress, rtol=0.0, atol=1e-9)


def test_atomic_energies_sum_to_the_total_and_padding_changes_nothing():
    positions, charges, cell = rattled_cell()
    charges = charges + 0.3  # charged: the background term is shared out too
    centers, neighbours, shifts, pair_mask, atom_mask, alpha, kvectors = energy_args(
        positions, cell, 6.0, 1e-8)
    fn = jax.jit(derive(atomic_fn, virial=True))
    plain = fn(jnp.asarray(positions), jnp.asarray(cell), jnp.asarray(charges), centers,
               neighbours, shifts, pair_mask, atom_mask, alpha, kvectors)
    total = float(ewald_energy(positions, charges, cell, 6.0, 1e-8))
    assert float(jnp.sum(plain.atomic_energies)) == pytest.approx(total, rel=1e-13)
    assert float(jnp.ptp(plain.atomic_energies)) > 0.1

    # Three padding atoms (one on top of atom 0, one with a stray charge), padding pairs with
    # zero-length vectors, and zero rows of k indices.
    n = len(positions)
    pad_positions = np.concatenate([positions, [positions[0], np.zeros(3), [1.0, 2.0, 3.0]]])
    pad_charges = np.concatenate([charges, [0.0, 0.0, 0.7]])
    pad_atoms = np.concatenate([atom_mask, np.zeros(3, bool)])
    pairs = np.array([[n, n], [0, n], [n, 0], [n + 1, n + 2], [n + 2, n + 2]], np.int32)
    pad_args = (np.concatenate([centers, pairs[:, 0]]), np.concatenate([neighbours, pairs[:, 1]]),
                np.concatenate([shifts, np.zeros((5, 3), np.int32)]),
                np.concatenate([pair_mask, np.zeros(5, bool)]), pad_atoms, alpha,
                np.concatenate([kvectors, np.zeros((4, 3), np.int32)]))
    padded = fn(jnp.asarray(pad_positions), jnp.asarray(cell), jnp.asarray(pad_charges),
                *pad_args)
    np.testing.assert_allclose(padded.atomic_energies[:n], plain.atomic_energies, rtol=1e-13)
    assert np.all(np.asarray(padded.atomic_energies[n:]) == 0.0)
    np.testing.assert_allclose(padded.forces[:n], plain.forces, rtol=1e-12, atol=1e-12)
    assert np.all(np.asarray(padded.forces[n:]) == 0.0)
    np.testing.assert_allclose(padded.virial, plain.virial, rtol=1e-12, atol=1e-12)
    # Forward over reverse (Hessians, heat flux) is NaN-free through the padding too.
    grad = jax.grad(lambda r: jnp.sum(atomic_fn(r, jnp.asarray(cell), jnp.asarray(pad_charges),
                                                *pad_args)))
    tangent = jnp.ones_like(jnp.asarray(pad_positions))
    _, curvature = jax.jit(lambda r: jax.jvp(grad, (r,), (tangent,)))(jnp.asarray(pad_positions))
    assert bool(jnp.all(jnp.isfinite(curvature))) and float(jnp.abs(curvature).max()) > 0.0
