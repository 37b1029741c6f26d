"""DFT-D3(BJ) as a model term (``model.dispersion: d3``): the term is the D3 energy of the
structure (``so3krates.terms.d3``, itself tested against ``dftd3`` in ``tests/test_d3.py``),
forces and stress are its derivatives, and the reference energies are fitted to the labels
minus it (float64)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule

from so3krates.data import Dataset
from so3krates.terms import d3

from test_long_range import make_model
from test_periodic_electrostatics import crystal


def d3_model(long_range_cutoff=None, functional="pbe0"):
    return make_model(long_range_cutoff=long_range_cutoff, dispersion="d3",
                      d3_functional=functional, zbl=False)


def test_the_term_is_the_d3_energy_of_a_molecule():
    model = d3_model(functional="pbe0")
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    atoms.info["charge"] = 0.0
    atoms.calc = model.calculator()
    atoms.get_potential_energy()
    term = atoms.calc.results["energy_terms"]["dispersion"]
    expected = float(d3.d3_energy(atoms.positions, atoms.numbers, functional="pbe0",
                                  cutoff=None, cn_cutoff=None))
    assert expected < -0.05  # a real contribution (eV)
    assert term == pytest.approx(expected, rel=1e-10)
    try:
        from dftd3.interface import DispersionModel, RationalDampingParam
    except ImportError:
        return
    from ase.units import Bohr, Hartree
    ref = DispersionModel(atoms.numbers, atoms.positions / Bohr).get_dispersion(
        RationalDampingParam(method="pbe0", atm=False), grad=False)["energy"] * Hartree
    assert term == pytest.approx(ref, rel=1e-6)  # ASE's bohr vs dftd3's (see test_d3.py)


def test_forces_and_stress_equal_finite_differences_in_a_crystal():
    model = d3_model(long_range_cutoff=6.0)
    atoms = crystal()  # triclinic, smaller than the long-range cutoff: images count
    atoms.rattle(0.05, seed=1)
    atoms.info["charge"] = 0.0
    atoms.calc = model.calculator()
    forces, stress = atoms.get_forces(), atoms.get_stress(voigt=False)
    assert abs(atoms.calc.results["energy_terms"]["dispersion"]) > 1e-2

    def energy(a):
        a = a.copy()
        a.calc = model.calculator()
        return a.get_potential_energy()

    h = 1e-5
    for atom, axis in [(0, 0), (5, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        fd = -(energy(plus) - energy(minus)) / (2 * h)
        assert forces[atom, axis] == pytest.approx(fd, rel=1e-6, abs=1e-7)
    for a, b in [(0, 0), (0, 1)]:
        eps = np.zeros((3, 3))
        eps[a, b] = eps[b, a] = h / (1 if a == b else 2)
        strained = []
        for sign in (1, -1):
            s = atoms.copy()
            s.set_cell(atoms.cell[:] @ (np.eye(3) + sign * eps), scale_atoms=True)
            strained.append(energy(s))
        fd = (strained[0] - strained[1]) / (2 * h) / atoms.get_volume()
        assert stress[a, b] == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_reference_energies_are_fitted_without_the_d3_energy():
    """The parameter-free energies the trainer subtracts include D3 (and ZBL when on)."""
    model = d3_model(long_range_cutoff=None, functional="pbe")
    structures = [molecule("CH3CH2OH"), molecule("H2O"), molecule("CH4")]
    data = Dataset([a.numbers for a in structures], [a.positions for a in structures],
                   np.zeros((3, 3, 3)), np.zeros((3, 3), bool), np.zeros(3),
                   [np.zeros((len(a), 3)) for a in structures])
    energies = model.terms.parameter_free_energies(data)
    for e, a in zip(energies, structures):
        assert e == pytest.approx(float(d3.d3_energy(a.positions, a.numbers, functional="pbe",
                                                     cutoff=None, cn_cutoff=None)), rel=1e-10)


def test_unknown_functional_and_elements_are_refused():
    with pytest.raises(ValueError, match="known"):
        d3_model(functional="not-a-functional").terms.check_elements([np.array([1, 6])])
    with pytest.raises(ValueError, match="Z"):
        d3_model().terms.check_elements([np.array([1, 95])])
