"""Stress, per-atom stresses and Hessians: derivatives of one energy function (float64).

The stress is the strain derivative of the energy over the volume (ASE's sign); it must equal
central finite differences of the energy under small strains, for a triclinic cell smaller
than the cutoff, a slab and a 2-block SO3krates; per-atom stresses (pair-vector virials)
must sum to it; ASE's Lennard-Jones must come out exactly through the same machinery.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc100
from ase.calculators.lj import LennardJones as AseLennardJones

from conftest import init_model, small_config
from so3krates.batching import single_graph
from so3krates.model_io import Model
from so3krates.potential import derive, predict_fn
from so3krates.terms import LennardJones

ELEMENTS = (1, 8, 29)


def random_model(dtype: str = "float64", seed: int = 0, radial_knots=None, params=None) -> Model:
    """A 2-block SO3krates with random parameters (non-trivial head) as a loaded model."""
    cfg = small_config(dtype)
    probe = bulk("Cu", "fcc", a=3.6)
    graph, _ = single_graph(probe.numbers, probe.positions, probe.cell[:], probe.pbc, cfg.cutoff,
                            dtype=np.dtype(dtype))
    if params is None:
        _, params = init_model(cfg, graph, seed)
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    refs = {z: -0.5 * z for z in ELEMENTS}
    return Model(Path("."), cfg, params, refs, 1.0, dtype, radial_knots=radial_knots)


def triclinic_small() -> Atoms:
    """4 atoms in a triclinic cell whose plane spacings (~3 Å) are below the 4 Å cutoff: each
    atom sees several images of each neighbour."""
    cell = np.array([[3.2, 0.0, 0.0], [0.8, 3.0, 0.0], [0.3, 0.5, 3.4]])
    frac = np.array([[0.1, 0.2, 0.1], [0.55, 0.45, 0.6], [0.3, 0.8, 0.4], [0.8, 0.1, 0.7]])
    return Atoms(numbers=[29, 29, 8, 1], scaled_positions=frac, cell=cell, pbc=True)


def slab() -> Atoms:
    """A rattled Cu(100) slab with an O adatom, periodic in x and y only."""
    atoms = fcc100("Cu", (2, 2, 3), a=3.6, vacuum=6.0)
    atoms += Atoms("O", positions=[atoms.positions[-1] + [0.9, 0.9, 1.6]])
    atoms.pbc = (True, True, False)
    atoms.rattle(0.05, seed=3)
    return atoms


def strained(atoms: Atoms, eps: np.ndarray) -> Atoms:
    out = atoms.copy()
    out.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
    return out


def finite_difference_stress(atoms: Atoms, energy, h: float = 1e-5) -> np.ndarray:
    """(1/V) dE/dε by central differences over symmetric strains, (3, 3)."""
    sigma = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            d = np.zeros((3, 3))
            d[a, b] += 0.5
            d[b, a] += 0.5
            sigma[a, b] = sigma[b, a] = (
                energy(strained(atoms, h * d)) - energy(strained(atoms, -h * d))) / (2 * h)
    return sigma / atoms.get_volume()


def voigt_to_3x3(s: np.ndarray) -> np.ndarray:
    from ase.stress import voigt_6_to_full_3x3_stress

    return voigt_6_to_full_3x3_stress(s)


@pytest.mark.parametrize("make", [triclinic_small, slab], ids=["triclinic_small_cell", "slab"])
def test_stress_equals_finite_differences(make):
    model = random_model()
    atoms = make()
    calc = model.calculator()

    def energy(a):
        return calc.get_potential_energy(a)

    sigma = voigt_to_3x3(calc.get_stress(atoms))
    fd = finite_difference_stress(atoms, energy)
    periodic = np.outer(atoms.pbc, atoms.pbc)
    assert np.abs(fd[periodic]).max() > 1e-3  # a real stress, not zeros compared with zeros
    np.testing.assert_allclose(sigma[periodic], fd[periodic], rtol=1e-6, atol=1e-9)
    assert np.all(sigma[~periodic] == 0.0)  # open directions of a slab carry no stress


def test_per_atom_stresses_sum_to_the_strain_stress():
    model = random_model()
    atoms = triclinic_small().repeat((2, 1, 1))
    atoms.rattle(0.05, seed=1)
    calc = model.calculator()
    stress = calc.get_stress(atoms)
    stresses = calc.get_stresses(atoms)
    assert stresses.shape == (len(atoms), 6)
    # Two derivations: the strain derivative and the pair-vector virial, split per atom.
    np.testing.assert_allclose(stresses.sum(axis=0), stress, rtol=1e-10, atol=1e-12)
    assert np.abs(stresses - stresses.mean(0)).max() > 1e-4  # per-atom values differ


def test_stress_of_the_float32_inference_path_matches_float64():
    """Spline-tabulated filters and fused CPU kernels (custom derivative rules) in float32
    against the exact network in float64."""
    exact = random_model("float64")
    fast = random_model("float32", params=exact.params)
    assert fast.radial_knots > 0
    atoms = triclinic_small().repeat((2, 2, 2))
    atoms.rattle(0.05, seed=2)
    s64 = exact.calculator().get_stress(atoms)
    s32 = fast.calculator().get_stress(atoms)
    np.testing.assert_allclose(s32, s64, atol=2e-5 * np.abs(s64).max())


def test_supercell_energy_and_stress_per_atom_equal_the_cell():
    """A 2-block model's receptive field (8 Å) exceeds the small cell: images must be exact."""
    model = random_model()
    atoms = triclinic_small()
    big = atoms.repeat((2, 2, 2))
    calc = model.calculator()
    e1, s1 = calc.get_potential_energy(atoms), calc.get_stress(atoms)
    calc2 = model.calculator()
    e8, s8 = calc2.get_potential_energy(big), calc2.get_stress(big)
    assert e8 / len(big) == pytest.approx(e1 / len(atoms), rel=1e-12)
    np.testing.assert_allclose(s8, s1, rtol=1e-9, atol=1e-12)


def test_molecule_stress_is_not_implemented():
    from ase.calculators.calculator import PropertyNotImplementedError

    atoms = Atoms("OH", positions=[[0, 0, 0], [0.97, 0, 0]])
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        random_model().calculator().get_stress(atoms)


def argon(n: int = 3, seed: int = 0) -> Atoms:
    """A rattled, sheared fcc argon cell of 4 n³ atoms."""
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((n, n, n))
    atoms.set_cell(atoms.cell[:] @ np.array([[1.02, 0.01, 0.0], [0.01, 0.99, 0.02],
                                              [0.0, 0.02, 1.01]]), scale_atoms=True)
    atoms.rattle(0.1, seed=seed)
    return atoms


LJ = LennardJones(sigma=3.405, epsilon=0.0104, rc=8.5, ro=6.5)


def test_lennard_jones_term_reproduces_ase():
    atoms = argon(4)  # 256 atoms
    assert len(atoms) == 256
    ase_calc = AseLennardJones(sigma=LJ.sigma, epsilon=LJ.epsilon, rc=LJ.rc, ro=LJ.ro, smooth=True)
    atoms.calc = ase_calc
    ref = {k: atoms.calc.get_property(k, atoms) for k in ("energy", "forces", "stress", "stresses")}

    graph, _ = single_graph(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc, LJ.cutoff,
                            dtype=np.float64)
    pred = jax.jit(predict_fn(LJ.atomic_energy_fn, atomic_stresses=True))(None, graph)
    strain = jax.jit(predict_fn(LJ.atomic_energy_fn, stress=True))(None, graph)
    n = len(atoms)
    assert float(pred.energy[0]) == pytest.approx(ref["energy"], rel=1e-12)
    np.testing.assert_allclose(np.asarray(pred.forces[:n]), ref["forces"], atol=1e-12)
    volume = atoms.get_volume()
    np.testing.assert_allclose(np.asarray(strain.stress[0]) * volume,
                               voigt_to_3x3(ref["stress"]) * volume, atol=1e-10)
    np.testing.assert_allclose(np.asarray(pred.stress[0]), np.asarray(strain.stress[0]), atol=1e-13)
    per_atom = np.stack([voigt_to_3x3(s) for s in ref["stresses"]])
    np.testing.assert_allclose(np.asarray(pred.atomic_stresses[:n]), per_atom, atol=1e-12)


def test_md_energy_function_virial_reproduces_ase():
    """The MD contract: ``energy_fn(positions, cell, neighbours)`` on the device Verlet list,
    forces and virial by :func:`so3krates.potential.derive`."""
    from so3krates.md.system import System, graph
    from so3krates.neighbours import verlet as nl

    atoms = argon(3)
    atoms.calc = AseLennardJones(sigma=LJ.sigma, epsilon=LJ.epsilon, rc=LJ.rc, ro=LJ.ro,
                                 smooth=True)
    system = System.from_atoms(atoms)
    spec = nl.allocate(atoms.positions, system.cell, system.pbc, LJ.cutoff, 0.5)

    def energy_fn(positions, cell, nbrs):
        return LJ.atomic_energy_fn(None, graph(positions, cell, system, nbrs))[: len(atoms)]

    @jax.jit
    def evaluate(positions, cell):
        return derive(energy_fn, virial=True)(positions, cell, nl.build(positions, cell, spec))

    out = evaluate(jnp.asarray(atoms.positions), jnp.asarray(atoms.cell[:]))
    assert float(out.energy) == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
    np.testing.assert_allclose(np.asarray(out.forces), atoms.get_forces(), atol=1e-12)
    np.testing.assert_allclose(np.asarray(out.virial) / atoms.get_volume(),
                               voigt_to_3x3(atoms.get_stress()), atol=1e-12)
    assert out.atomic_energies.shape == (len(atoms),)


def test_hessian_equals_finite_differences_of_forces():
    """Forward over reverse mode through the exact network (no custom derivative rules)."""
    model = random_model()
    atoms = slab()[:6]
    atoms.pbc = False
    h = model.hessian(atoms).reshape(3 * len(atoms), -1)
    calc = model.calculator()
    step = 1e-5
    fd = np.zeros_like(h)
    for k in range(3 * len(atoms)):
        a = atoms.copy()
        a.positions.reshape(-1)[k] += step
        fp = calc.get_forces(a).reshape(-1)
        a.positions.reshape(-1)[k] -= 2 * step
        fm = calc.get_forces(a).reshape(-1)
        fd[:, k] = -(fp - fm) / (2 * step)
    assert np.abs(h).max() > 0.1
    np.testing.assert_allclose(h, fd, atol=1e-6 * np.abs(h).max())
    np.testing.assert_allclose(h, h.T, atol=1e-10 * np.abs(h).max())
