"""Particle-mesh Ewald (``so3krates.terms.pme``): the mesh sum equals the k-vector Ewald sum to
the mesh's accuracy, its forces and stress are exact derivatives of its own energy, and a model
gives the same energies, forces and stresses with either k-space method, in the calculator and
the compiled MD engine (float64)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.stress import voigt_6_to_full_3x3_stress

from so3krates.md.system import System, kspace_of, long_range_cutoff, model_energy_fn
from so3krates.neighbours import verlet
from so3krates.neighbours.kspace import kspace_indices, mesh_shape, use_pme
from so3krates.potential import derive
from so3krates.terms.ewald import ewald_split, kspace_atomic_energies
from so3krates.terms.pme import pme_atomic_energies

from test_long_range import make_model, nve_drift
from test_periodic_electrostatics import crystal

CELL = np.array([[18.0, 0.0, 0.0], [1.5, 17.0, 0.0], [0.7, -1.1, 19.0]])


def random_charges(n=200, total=0.3, seed=0):
    rng = np.random.default_rng(seed)
    positions = rng.random((n, 3)) @ CELL
    q = rng.normal(size=n)
    return positions, q - q.mean() + total / n


def ewald_and_pme(positions, q, cell, real_cutoff):
    """(energy, forces, virial) of the reciprocal+self+background parts both ways."""
    n = len(q)
    alpha, k_cut = ewald_split(real_cutoff, 1e-6)
    m = jnp.asarray(kspace_indices(cell, k_cut))
    on = jnp.ones(n, bool)

    def ewald(r, c):
        return jnp.sum(kspace_atomic_energies(r, jnp.asarray(q), jnp.zeros(n, jnp.int32),
                                              c[None], m[None], jnp.ones(1, bool), on, alpha))

    def pme(r, c):
        return jnp.sum(pme_atomic_energies(r, jnp.asarray(q), c, on, alpha,
                                           mesh_shape(cell, alpha)))

    def derived(fn):
        r, c = jnp.asarray(positions), jnp.asarray(cell)
        e, f = jax.value_and_grad(fn)(r, c)
        virial = jax.grad(lambda eps: fn(r @ (jnp.eye(3) + eps), c @ (jnp.eye(3) + eps)))(
            jnp.zeros((3, 3)))
        return float(e), -np.asarray(f), np.asarray(virial)

    return derived(jax.jit(ewald)), derived(jax.jit(pme)), pme


@pytest.mark.parametrize("real_cutoff", [6.0, 10.0])
def test_pme_equals_the_ewald_sum_to_the_mesh_accuracy(real_cutoff):
    """A charged (neutralising background) triclinic box of 200 random charges."""
    positions, q = random_charges()
    (e0, f0, v0), (e1, f1, v1), _ = ewald_and_pme(positions, q, CELL, real_cutoff)
    assert abs(e1 - e0) < 1e-5 * abs(e0)
    assert np.linalg.norm(f1 - f0) < 3e-5 * np.linalg.norm(f0)
    assert np.abs(v1 - v0).max() < 2e-4 * np.abs(v0).max()


def test_pme_forces_and_stress_are_derivatives_of_its_energy():
    positions, q = random_charges(n=60, seed=1)
    _, (e, f, virial), pme = ewald_and_pme(positions, q, CELL, 8.0)
    h = 1e-5
    for atom, axis in [(0, 0), (17, 2), (42, 1)]:
        d = np.zeros_like(positions)
        d[atom, axis] = h
        fd = (pme(positions + d, CELL) - pme(positions - d, CELL)) / (2 * h)
        assert f[atom, axis] == pytest.approx(-float(fd), rel=1e-6, abs=1e-8)
    for a, b in [(0, 0), (1, 0), (2, 1)]:
        eps = np.zeros((3, 3))
        eps[a, b] = h
        t_plus, t_minus = np.eye(3) + eps, np.eye(3) - eps
        fd = (pme(positions @ t_plus, CELL @ t_plus) - pme(positions @ t_minus, CELL @ t_minus))
        assert virial[a, b] == pytest.approx(float(fd) / (2 * h), rel=1e-6, abs=1e-8)


def test_mesh_shape_and_the_auto_choice():
    alpha = ewald_split(10.0, 1e-6)[0]
    shape = mesh_shape(CELL, alpha)
    spacing = 0.25 / (np.sqrt(2) * alpha)
    volume = abs(np.linalg.det(CELL))
    planes = volume / np.linalg.norm(np.cross(CELL[[1, 2, 0]], CELL[[2, 0, 1]]), axis=1)
    for n, d in zip(shape, planes):
        assert d / n <= spacing  # fine enough between lattice planes
        assert d / n > 0.75 * spacing  # and not much finer
        assert set(_factors(n)) <= {2, 3, 5}
    with pytest.raises(ValueError, match="volume"):
        mesh_shape(np.zeros((3, 3)), alpha)
    assert use_pme("pme", 10, 10) and not use_pme("ewald", 10**5, 10**5)
    assert use_pme("auto", 2000, 500) and not use_pme("auto", 100, 500)
    with pytest.raises(ValueError, match="auto, ewald or pme"):
        use_pme("fft", 1, 1)


def _factors(n):
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


@pytest.fixture(scope="module")
def models():
    """The same parameters with k-vectors and with a mesh."""
    ewald = make_model(long_range_cutoff=6.0, zbl=False, dispersion="none",
                       kspace_method="ewald")
    pme = dataclasses.replace(ewald, config=ewald.config.model_copy(
        update={"kspace_method": "pme"}))
    assert pme.terms.kspace_method == "pme"
    return ewald, pme


def test_a_model_gives_the_same_results_with_either_method(models):
    atoms = crystal().repeat((2, 2, 1))
    atoms.rattle(0.03, seed=4)
    results = []
    for model in models:
        atoms.calc = model.calculator()
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(),
                        atoms.calc.results["energy_terms"]["electrostatics"]))
    graph, _ = models[1].graph(atoms)
    assert graph.ewald.mesh is not None and graph.ewald.kvectors.shape[1] == 0
    (e0, f0, s0, c0), (e1, f1, s1, c1) = results
    assert abs(c0) > 1e-2
    assert abs(c1 - c0) < 1e-5 * abs(c0)
    np.testing.assert_allclose(f1, f0, atol=1e-5 * np.abs(f0).max())
    np.testing.assert_allclose(s1, s0, atol=1e-4 * np.abs(s0).max())


def test_the_md_engine_with_a_mesh_equals_the_calculator(models):
    model = models[1]
    atoms = crystal().repeat((2, 1, 1))
    atoms.rattle(0.03, seed=2)
    system = System.from_atoms(atoms)
    assert kspace_of(system, model.terms).mesh is not None
    spec = verlet.allocate(atoms.positions, system.cell, system.pbc, model.cutoff, 0.5,
                           long_cutoff=long_range_cutoff(model))
    r, cell = jnp.asarray(atoms.positions), jnp.asarray(system.cell)
    nbrs = jax.jit(verlet.build, static_argnums=2)(r, cell, spec)
    out = jax.jit(derive(model_energy_fn(model, system), virial=True))(r, cell, nbrs)
    atoms.calc = model.calculator()
    assert float(out.energy) == pytest.approx(atoms.get_potential_energy(), rel=1e-12,
                                              abs=1e-9)
    np.testing.assert_allclose(np.asarray(out.forces), atoms.get_forces(), atol=1e-9)
    np.testing.assert_allclose(np.asarray(out.virial) / atoms.get_volume(),
                               voigt_6_to_full_3x3_stress(atoms.get_stress()), atol=1e-10)


def test_nve_with_a_mesh_and_d3_dispersion_conserves_energy(tmp_path):
    """The compiled engine on a triclinic crystal: electrostatics on a PME mesh and D3(BJ)
    dispersion, both from the engine's own long-range list."""
    model = make_model(long_range_cutoff=6.0, zbl=False, dispersion="d3",
                       kspace_method="pme")
    atoms = crystal().repeat((2, 1, 1))
    atoms.rattle(0.02, seed=5)
    drift, summary = nve_drift(model, atoms, tmp_path)
    assert drift < 0.05, summary
