"""Electrostatics of 3D-periodic structures in a model: the Ewald sum of its learned charges
(real space over the long-range half list, reciprocal space over the graph's k-vectors),
checked against the independently tested full-list Ewald sum (test_ewald.py), finite
differences of forces and stress (float64), supercell consistency, mixed batches of
molecules and crystals, and clear errors for slabs."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress

from so3krates.batching import Capacity, pack
from so3krates.model_io import Model
from so3krates.neighbours import long_range_list, neighbour_list
from so3krates.neighbours.kspace import kspace_indices
from so3krates.terms.coulomb import K_E, switch_function
from so3krates.terms.ewald import ewald_energy

from test_long_range import make_model
from test_stress import finite_difference_stress

RC = 6.0  # real-space (long-range) cutoff, Å


def crystal() -> Atoms:
    """A triclinic cell of 6 atoms, smaller than the real-space cutoff (images count)."""
    cell = [[5.0, 0.0, 0.0], [0.8, 5.2, 0.0], [0.3, -0.4, 5.4]]
    frac = [[0.1, 0.1, 0.1], [0.4, 0.5, 0.3], [0.7, 0.2, 0.8], [0.2, 0.7, 0.6],
            [0.85, 0.8, 0.35], [0.55, 0.9, 0.05]]
    return Atoms("COH3O", cell=cell, pbc=True, scaled_positions=frac)


def periodic_model(accuracy: float = 1e-6, **kw) -> Model:
    model = make_model(long_range_cutoff=RC, dispersion="none", zbl=False,
                       ewald_accuracy=accuracy, **kw)
    return model


@pytest.fixture(scope="module")
def model() -> Model:
    return periodic_model()


def damping_correction(atoms: Atoms, q: np.ndarray, cutoff: float) -> float:
    """Σ_pairs k_e q_i q_j f(r) (1/sqrt(r² + 1) - 1/r) over a full list (halved): what the
    model's short-range damping changes in the bare Coulomb sum."""
    nl = neighbour_list(atoms.positions, atoms.cell[:], atoms.pbc, 0.75 * cutoff)
    vec = atoms.positions[nl.neighbours] - atoms.positions[nl.centers] + nl.shifts @ atoms.cell[:]
    r = np.linalg.norm(vec, axis=1)
    f = np.asarray(switch_function(r, 0.25 * cutoff, 0.75 * cutoff))
    return 0.5 * K_E * float(np.sum(q[nl.centers] * q[nl.neighbours] * f
                                    * (1.0 / np.sqrt(r * r + 1.0) - 1.0 / r)))


def test_electrostatics_is_the_ewald_sum_of_the_learned_charges(model):
    atoms = crystal()
    graph, _ = model.graph(atoms)
    assert graph.ewald is not None and bool(graph.ewald.periodic[0])
    pred = model.predict(graph)
    q = np.asarray(pred.charges)[: len(atoms)]
    assert np.abs(q).max() > 1e-3 and abs(q.sum()) < 1e-12
    # The reference: the full-list Ewald sum at a much tighter accuracy (other alpha, more
    # k-vectors), plus the damping correction computed apart.
    reference = float(ewald_energy(atoms.positions, q, atoms.cell[:], 9.0, 1e-12))
    reference += damping_correction(atoms, q, model.cutoff)
    term = float(pred.energy_terms["electrostatics"][0])
    assert abs(term) > 1e-3
    assert term == pytest.approx(reference, rel=1e-5, abs=1e-7)


def test_forces_and_stress_equal_finite_differences(model):
    atoms = crystal()
    atoms.rattle(0.05, seed=1)
    calc = model.calculator()
    atoms.calc = calc
    forces, sigma = atoms.get_forces(), voigt_6_to_full_3x3_stress(atoms.get_stress())
    assert abs(calc.results["energy_terms"]["electrostatics"]) > 1e-3

    def energy(a):
        return calc.get_potential_energy(a)

    h = 1e-4  # the total energy is ~5000 eV: a smaller step meets its float64 rounding
    fd = np.zeros_like(forces)
    for k in range(len(atoms)):
        for c in range(3):
            a = atoms.copy()
            a.positions[k, c] += h
            ep = energy(a)
            a.positions[k, c] -= 2 * h
            fd[k, c] = -(ep - energy(a)) / (2 * h)
    np.testing.assert_allclose(forces, fd, rtol=1e-6, atol=1e-8)
    fd_sigma = finite_difference_stress(atoms, energy, h)
    assert np.abs(fd_sigma).max() > 1e-4
    np.testing.assert_allclose(sigma, fd_sigma, rtol=1e-6, atol=1e-9)


def test_supercell_energy_is_extensive_for_a_charged_cell():
    """A cell of total charge +1 in its neutralising background and its 2x1x1 supercell
    (charge +2) are the same infinite system: twice the energy, the same per-atom charges."""
    model = periodic_model(accuracy=1e-10, charge_spin=False)
    atoms = crystal()
    atoms.info["charge"] = 1.0
    big = atoms.repeat((2, 1, 1))
    big.info["charge"] = 2.0
    small_pred, big_pred = (model.predict(model.graph(a)[0]) for a in (atoms, big))
    np.testing.assert_allclose(np.asarray(big_pred.charges)[: len(big)],
                               np.tile(np.asarray(small_pred.charges)[: len(atoms)], 2),
                               atol=1e-12)
    e_small = float(small_pred.energy_terms["electrostatics"][0])
    e_big = float(big_pred.energy_terms["electrostatics"][0])
    assert abs(e_small) > 1e-3
    assert e_big == pytest.approx(2 * e_small, rel=1e-8)
    assert float(big_pred.energy[0]) == pytest.approx(2 * float(small_pred.energy[0]), rel=1e-10)


def test_a_molecule_and_a_crystal_in_one_batch(model):
    """Packed together, each keeps its own energy: vacuum Coulomb for the molecule, an Ewald
    sum for the crystal; nothing leaks between structures."""
    from test_long_range import ethanol

    mol, xtal = ethanol(), crystal()
    alone = [model.predict(model.graph(a)[0]) for a in (mol, xtal)]
    options = model.terms.graph_options()
    nls = [neighbour_list(a.positions, a.cell[:], a.pbc, model.cutoff) for a in (mol, xtal)]
    lrs = [long_range_list(a.positions, a.cell[:], a.pbc, RC) for a in (mol, xtal)]
    kv = [None, kspace_indices(xtal.cell[:], options["kspace_cutoff"])]
    cap = Capacity(atoms=32, pairs=sum(len(n.centers) for n in nls) + 16, structures=3,
                   long_pairs=sum(len(n.centers) for n in lrs) + 16, kvectors=len(kv[1]) + 5)
    graph = pack([a.numbers for a in (mol, xtal)], [a.positions for a in (mol, xtal)],
                 np.stack([mol.cell[:], xtal.cell[:]]), nls, cap, np.float64,
                 charge=[0.0, 0.0], spin=[0.0, 0.0], long_range_lists=lrs, kvectors=kv)
    both = model.predict(graph)
    for s, ref in enumerate(alone):
        assert float(both.energy[s]) == pytest.approx(float(ref.energy[0]), rel=1e-12)
        assert float(both.energy_terms["electrostatics"][s]) == pytest.approx(
            float(ref.energy_terms["electrostatics"][0]), rel=1e-10, abs=1e-12)
    n_mol = len(mol)
    np.testing.assert_allclose(both.forces[:n_mol], alone[0].forces[:n_mol], atol=1e-10)
    np.testing.assert_allclose(both.forces[n_mol:n_mol + len(xtal)],
                               alone[1].forces[:len(xtal)], atol=1e-10)


def test_slabs_and_missing_cutoff_are_refused_clearly(model):
    slab = crystal()
    slab.pbc = (True, True, False)
    with pytest.raises(ValueError, match="slabs"):
        model.graph(slab)
    no_cutoff = make_model(dispersion="none", zbl=False)
    with pytest.raises(ValueError, match="long_range_cutoff"):
        no_cutoff.graph(crystal())
