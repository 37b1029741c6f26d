"""Long-range terms in the compiled MD engine: the pairs within ``long_range_cutoff`` come
from the engine's own Verlet list (selected from it each step, re-allocated on overflow),
and periodic structures get their Ewald k-vectors; energies, forces and virials equal the
padded-graph path (the calculator's), NVE conserves energy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.stress import voigt_6_to_full_3x3_stress

from so3krates.md.system import System, long_range_cutoff, model_energy_fn
from so3krates.neighbours import verlet
from so3krates.potential import derive

from test_long_range import ethanol, make_model, nve_drift
from test_periodic_electrostatics import crystal


def two_molecules() -> Atoms:
    """Two ethanols ~7 Å apart: some pairs within a 6 Å long-range cutoff, most beyond."""
    a, b = ethanol(), ethanol()
    b.positions += [7.0, 1.0, 0.5]
    out = a + b
    out.info["charge"] = 0.0
    return out


def engine_vs_calculator(model, atoms, skin=0.5, long_capacity=None):
    system = System.from_atoms(atoms)
    spec = verlet.allocate(atoms.positions, system.cell, system.pbc, model.cutoff, skin,
                           long_cutoff=long_range_cutoff(model))
    if long_capacity is not None:
        spec = spec._replace(long_capacity=long_capacity)
    r, cell = jnp.asarray(atoms.positions), jnp.asarray(system.cell)
    nbrs = jax.jit(verlet.build, static_argnums=2)(r, cell, spec)
    out = jax.jit(derive(model_energy_fn(model, system), virial=True))(r, cell, nbrs)
    atoms.calc = model.calculator()
    return out, nbrs


@pytest.mark.parametrize("case", ["cluster", "crystal"])
def test_engine_energy_forces_virial_equal_the_calculator_s(case):
    if case == "cluster":
        model, atoms = make_model(long_range_cutoff=6.0), two_molecules()
    else:
        model, atoms = make_model(long_range_cutoff=6.0, zbl=False), crystal()
        atoms.rattle(0.03, seed=2)
    out, nbrs = engine_vs_calculator(model, atoms)
    assert nbrs.long_range is not None and not bool(nbrs.overflow)
    n_long = int(nbrs.long_range.n_pairs)
    # The host half list within the same cutoff has the same pairs.
    from so3krates.neighbours import long_range_list
    assert n_long == len(long_range_list(atoms.positions, atoms.cell[:], atoms.pbc, 6.0).centers)
    if case == "cluster":
        assert 0 < n_long < len(atoms) * (len(atoms) - 1) // 2  # a cut, not all pairs
    energy = atoms.get_potential_energy()
    assert float(out.energy) == pytest.approx(energy, rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(np.asarray(out.forces), atoms.get_forces(), atol=1e-9)
    if case == "crystal":
        assert abs(atoms.calc.results["energy_terms"]["electrostatics"]) > 1e-3
        sigma = np.asarray(out.virial) / atoms.get_volume()
        np.testing.assert_allclose(sigma, voigt_6_to_full_3x3_stress(atoms.get_stress()),
                                   atol=1e-10)


def test_an_overflowing_long_range_list_is_flagged_and_grown():
    atoms = two_molecules()
    spec = verlet.allocate(atoms.positions, np.zeros((3, 3)), atoms.pbc, 4.0, 0.5,
                           long_cutoff=6.0)
    short = spec._replace(long_capacity=16)
    r, cell = jnp.asarray(atoms.positions), jnp.zeros((3, 3))
    build = jax.jit(verlet.build, static_argnums=2)
    nbrs = build(r, cell, short)
    assert bool(nbrs.overflow)  # never silently short
    assert int(nbrs.long_range.n_pairs) > 16
    grown = verlet.grow(short, nbrs)
    assert grown.long_capacity >= int(nbrs.long_range.n_pairs)
    again = build(r, cell, grown)
    assert not bool(again.overflow)
    assert int(again.long_range.n_pairs) == int(nbrs.long_range.n_pairs)


def test_nve_of_a_crystal_with_ewald_and_dispersion_conserves_energy(tmp_path):
    """The compiled engine on a periodic cell with electrostatics (Ewald) and learned
    dispersion, the long-range pairs from its own Verlet list."""
    atoms = crystal().repeat((2, 1, 1))
    atoms.rattle(0.02, seed=5)
    drift, summary = nve_drift(make_model(long_range_cutoff=6.0, zbl=False), atoms, tmp_path)
    assert drift < 0.05, summary
