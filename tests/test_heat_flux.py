"""The heat flux from the energy function: Lennard-Jones against ASE's per-atom virials, and a
2-block SO3krates against the brute-force Hardy sum over the full Jacobian (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLennardJones
from ase.stress import voigt_6_to_full_3x3_stress

from so3krates.heat_flux import HeatFlux, heat_flux_fn, unfold
from so3krates.terms import LennardJones
from test_stress import random_model, triclinic_small

LJ = LennardJones(sigma=3.405, epsilon=0.0104, rc=8.5, ro=6.5)


def test_lennard_jones_heat_flux_equals_the_per_atom_virial_flux():
    """For pair potentials J_pot = -Σ_i (V σ_i) v_i with ASE's per-atom stresses σ_i."""
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((3, 3, 3))
    atoms.set_cell(atoms.cell[:] @ np.array([[1.01, 0.02, 0.0], [0.0, 0.99, 0.01],
                                              [0.0, 0.0, 1.02]]), scale_atoms=True)
    atoms.rattle(0.1, seed=4)
    rng = np.random.default_rng(0)
    v = rng.normal(scale=0.005, size=(len(atoms), 3))  # Å/fs
    v -= v.mean(0)
    atoms.calc = AseLennardJones(sigma=LJ.sigma, epsilon=LJ.epsilon, rc=LJ.rc, ro=LJ.ro,
                                 smooth=True)
    per_atom = np.stack([voigt_6_to_full_3x3_stress(s) for s in atoms.get_stresses()])
    expected = -np.einsum("iab,ib->a", per_atom * atoms.get_volume(), v)

    flux = HeatFlux(LJ.atomic_energy_fn, None, atoms.numbers, atoms.get_masses(), atoms.pbc,
                    reach=LJ.rc, cutoff=LJ.rc)
    j, j_pot, j_conv = flux(atoms.positions, v, atoms.cell[:])
    assert np.abs(expected).max() > 1e-4
    np.testing.assert_allclose(j_pot, expected, rtol=1e-9, atol=1e-14)
    energies = atoms.get_potential_energies()
    atoms.set_velocities(v / units.fs)  # ASE's own kinetic energies (eV)
    kinetic = 0.5 * atoms.get_masses() * np.sum(atoms.get_velocities() ** 2, axis=1)
    assert kinetic.sum() == pytest.approx(atoms.get_kinetic_energy(), rel=1e-12)
    np.testing.assert_allclose(j_conv, ((energies - energies.mean() + kinetic)[:, None] * v).sum(0),
                               rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(j, j_pot + j_conv, rtol=1e-12)
    # Atoms given as other images (unwrapped, as diffusing MD gives them): the same flux, and
    # no new compilation.
    images = atoms.positions + rng.integers(-3, 4, size=(len(atoms), 3)) @ atoms.cell[:]
    np.testing.assert_allclose(flux(images, v, atoms.cell[:])[0], j, rtol=1e-10, atol=1e-14)
    assert flux.compiled_variants() == 1
    # A larger unfolding changes nothing; one short of the interaction range does.
    wide = HeatFlux(LJ.atomic_energy_fn, None, atoms.numbers, atoms.get_masses(), atoms.pbc,
                    reach=LJ.rc + 2.0, cutoff=LJ.rc)
    np.testing.assert_allclose(wide(atoms.positions, v, atoms.cell[:])[0], j, rtol=1e-10)
    short = HeatFlux(LJ.atomic_energy_fn, None, atoms.numbers, atoms.get_masses(), atoms.pbc,
                     reach=LJ.rc - 2.0, cutoff=LJ.rc)
    assert np.abs(short(atoms.positions, v, atoms.cell[:])[1] - j_pot).max() > 1e-3 * np.abs(j_pot).max()


def brute_force_hardy(atomic_energy_fn, params, u, velocities):
    """Σ_{j∈cell} Σ_i (r_j − r_i)(∂U_j/∂r_i · v_i) from the full Jacobian (no jvp trick)."""
    @jax.jit
    def hardy(graph, velocities):
        r = graph.positions

        def cell_energies(positions):
            return atomic_energy_fn(params, graph._replace(positions=positions))[: u.n_cell]

        jac = jax.jacrev(cell_energies)(r)  # (n_cell, M, 3)
        rate = jnp.einsum("jia,ia->ji", jac, velocities)  # ∂U_j/∂r_i · v_i
        diff = r[: u.n_cell, None, :] - r[None, :, :]  # r_j - r_i
        return jnp.einsum("ji,jia->a", rate, diff)

    return np.asarray(hardy(u.graph, velocities))


def test_model_heat_flux_equals_the_brute_force_jacobian_sum():
    model = random_model()
    atoms = triclinic_small()
    atoms.rattle(0.05, seed=7)
    masses = atoms.get_masses()
    rng = np.random.default_rng(1)
    v = rng.normal(scale=0.01, size=(len(atoms), 3))
    reach = model.config.num_layers * model.cutoff
    u, _ = unfold(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc, reach, model.cutoff)
    n_real = int(u.graph.atom_mask.sum())
    assert n_real > 10 * len(atoms)  # the cell is far smaller than the receptive field
    vu = np.where((np.arange(len(u.index)) < n_real)[:, None], v[u.index], 0.0)
    mu = np.where(np.arange(len(u.index)) < n_real, masses[u.index], 0.0)
    atomic = model.exact_atomic_energy_fn()
    j, j_pot, _ = jax.jit(heat_flux_fn(atomic), static_argnames="n_cell")(
        model.params, u.graph, vu, mu, n_cell=u.n_cell)
    reference = brute_force_hardy(atomic, model.params, u, vu)
    assert np.abs(reference).max() > 1e-3
    np.testing.assert_allclose(np.asarray(j_pot), reference, rtol=1e-9, atol=1e-12)

    # The unfolded system's cell atoms have the periodic site energies.
    periodic = model.calculator().get_potential_energies(atoms)
    unfolded = np.asarray(atomic(model.params, u.graph))[: len(atoms)]
    np.testing.assert_allclose(unfolded, periodic, rtol=1e-10)


def test_autocorrelation_and_green_kubo_integral():
    from ase import units

    from so3krates.md.thermal import KAPPA_UNIT, autocorrelation, green_kubo

    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 3))
    c = autocorrelation(x, 10)
    direct = np.stack([np.einsum("ta,tb->ab", x[: 50 - k], x[k:]) / (50 - k) for k in range(10)])
    np.testing.assert_allclose(c, direct, atol=1e-12)

    # An Ornstein-Uhlenbeck flux: <J(0) J(t)> = s² exp(-t/τ), integral s² τ per component.
    s, tau, dt, n = 0.3, 20.0, 1.0, 400_000
    a = np.exp(-dt / tau)
    noise = rng.normal(scale=s * np.sqrt(1 - a * a), size=(n, 3))
    j = np.empty((n, 3))
    j[0] = rng.normal(scale=s, size=3)
    for k in range(1, n):  # noqa: B007 - a plain recursion
        j[k] = a * j[k - 1] + noise[k]
    volume, temperature = 1000.0, 300.0
    lags, kappa = green_kubo(j, dt, volume, temperature, max_lag_fs=10 * tau)
    expected = s * s * tau / (volume * units.kB * temperature**2) * KAPPA_UNIT
    diag = np.diagonal(kappa[-1])
    np.testing.assert_allclose(diag, expected, rtol=0.1)
    assert abs(kappa[-1][0, 1]) < 0.1 * expected


def test_green_kubo_of_short_runs_is_unbiased():
    """Runs a few correlation windows long: correlating the flux itself (whose equilibrium
    mean is zero) recovers the integral; subtracting each run's sample mean (the former
    default) biased it low by a fraction of order 2 window / run."""
    from ase import units

    from so3krates.md.thermal import KAPPA_UNIT, green_kubo

    rng = np.random.default_rng(3)
    s, tau, n, runs = 1.0, 10.0, 200, 2000  # each run 20 τ, window 5 τ
    a = np.exp(-1.0 / tau)
    j = np.empty((n, runs, 3))
    j[0] = rng.normal(scale=s, size=(runs, 3))
    for k in range(1, n):
        j[k] = a * j[k - 1] + rng.normal(scale=s * np.sqrt(1 - a * a), size=(runs, 3))
    volume, temperature = 1000.0, 50.0
    unit = KAPPA_UNIT / (volume * units.kB * temperature**2)
    expected = s * s * tau * (1 - np.exp(-5.0)) * unit  # ∫_0^5τ s² exp(-t/τ) dt

    def mean_end(subtract_mean):
        ends = [np.diagonal(green_kubo(j[:, r], 1.0, volume, temperature, 5 * tau,
                                       subtract_mean=subtract_mean)[1][-1]) for r in range(runs)]
        return float(np.mean(ends))

    assert mean_end(False) == pytest.approx(expected, rel=0.04)
    assert mean_end(True) < 0.8 * expected  # the sample-mean bias (about -40 % here)


def test_thermal_conductivity_of_lj_argon_runs_and_is_positive():
    from so3krates.md import System
    from so3krates.md.system import graph
    from so3krates.md.thermal import thermal_conductivity

    atoms = bulk("Ar", "fcc", a=5.30, cubic=True).repeat((2, 2, 2))
    system = System.from_atoms(atoms)

    def energy_fn(positions, cell, nbrs):
        return LJ.atomic_energy_fn(None, graph(positions, cell, system, nbrs))[: len(atoms)]

    flux = HeatFlux(LJ.atomic_energy_fn, None, atoms.numbers, system.masses, atoms.pbc,
                    reach=LJ.rc, cutoff=LJ.rc)
    per_run = []
    res = thermal_conductivity(energy_fn, flux, system, atoms.positions, LJ.rc, temperature=40.0,
                               runs=2, equilibration_fs=400.0, production_fs=2400.0,
                               timestep=4.0, sample_every=4, max_lag_fs=800.0,
                               on_run=lambda r, x: per_run.append(x))
    assert res["kappa_W_mK"].shape == (3, 3)
    np.testing.assert_allclose(res["kappa_W_mK"], res["kappa_W_mK"].T, rtol=1e-12)
    # Each run's κ from its own flux series at its own mean (NVE) temperature, not the target.
    from so3krates.md.thermal import green_kubo, plateau

    volume = atoms.get_volume()
    expected = [plateau(green_kubo(p["flux"], 16.0, volume, p["mean_temperature_K"], 800.0)[1])
                for p in per_run]
    assert per_run[0]["flux"].shape == (150, 3)
    assert all(abs(p["mean_temperature_K"] - 40.0) > 1e-3 for p in per_run)
    np.testing.assert_allclose(res["kappa_W_mK"], np.mean(expected, axis=0), rtol=1e-12)
    assert 0.05 < res["kappa_mean_W_mK"] < 5.0, res["kappa_mean_W_mK"]
    assert 30.0 < res["mean_temperature_K"] < 50.0
    assert res["running_integral_W_mK"].shape[0] == len(res["lags_fs"])
