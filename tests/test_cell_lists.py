"""Cell-list neighbour search (``so3krates.neighbours.cells``): the same pairs as brute force
(vesin and the all-pairs search) on open, cubic, triclinic and slab systems, through updates,
and overflow (a full bin, a compressed box) flagged and grown, never silent."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from so3krates.md.system import System
from so3krates.neighbours import neighbour_list
from so3krates.neighbours import verlet as nl
from test_md_engine import pair_set

CUTOFF, SKIN = 3.0, 0.5
build = jax.jit(nl.build, static_argnums=2)
update = jax.jit(nl.update, static_argnums=3)


def reference(atoms, radius):
    system = System.from_atoms(atoms)
    ref = neighbour_list(atoms.positions, system.cell, system.pbc, radius)
    return set(zip(ref.centers, ref.neighbours, map(tuple, ref.shifts)))


def systems():
    rng = np.random.default_rng(0)
    gas = Atoms("Ar400", positions=rng.uniform(0, 24, (400, 3)))  # an open cluster
    cubic = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(6)
    cubic.rattle(0.1, seed=1)
    cubic.positions += 7.3  # outside the cell: wrapping must be undone in the shifts
    skew = np.array([[13.0, 0.0, 0.0], [4.0, 12.5, 0.0], [-3.0, 2.5, 12.0]])
    tri = Atoms("Ar500", scaled_positions=rng.uniform(0, 1, (500, 3)), cell=skew, pbc=True)
    slab = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((5, 5, 2))
    slab.pbc = [True, True, False]
    slab.cell[2] = 0.0
    slab.rattle(0.1, seed=3)
    return {"open": gas, "cubic": cubic, "triclinic": tri, "slab": slab}


@pytest.mark.parametrize("name", ["open", "cubic", "triclinic", "slab"])
def test_cell_lists_find_the_pairs_of_brute_force(name):
    atoms = systems()[name]
    system = System.from_atoms(atoms)
    pos, cell = jnp.asarray(atoms.positions), jnp.asarray(system.cell)
    spec = nl.allocate(atoms.positions, system.cell, system.pbc, CUTOFF, SKIN, search="cells")
    brute = nl.allocate(atoms.positions, system.cell, system.pbc, CUTOFF, SKIN,
                        search="all_pairs")
    assert spec.bins is not None and brute.bins is None
    assert np.prod(spec.bins) >= 8  # a real grid, not one bin holding everything
    nbrs, ref = build(pos, cell, spec), build(pos, cell, brute)
    assert not bool(nbrs.overflow)
    for lst, other, radius in ((nbrs.verlet, ref.verlet, CUTOFF + SKIN), (nbrs, ref, CUTOFF)):
        assert pair_set(lst, len(atoms)) == reference(atoms, radius) == pair_set(other, len(atoms))
        c, j, s = (np.asarray(a) for a in (lst.centers, lst.neighbours, lst.shifts))
        m, h = c < len(atoms), len(c) // 2  # the halves layout holds
        np.testing.assert_array_equal(m[:h], m[h:])
        np.testing.assert_array_equal(c[:h][m[:h]], j[h:][m[h:]])
        np.testing.assert_array_equal(s[:h][m[:h]], -s[h:][m[h:]])


def test_cell_lists_stay_exact_through_updates():
    atoms = systems()["cubic"]
    system = System.from_atoms(atoms)
    spec = nl.allocate(atoms.positions, system.cell, system.pbc, CUTOFF, SKIN, search="cells")
    cell = jnp.asarray(system.cell)
    nbrs = build(jnp.asarray(atoms.positions), cell, spec)
    rng = np.random.default_rng(4)
    rebuilt = 0
    for _ in range(12):  # random walks that cross the skin and the cell faces
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        old = nbrs.verlet.reference
        nbrs = update(jnp.asarray(atoms.positions), cell, nbrs, spec)
        rebuilt += not np.array_equal(np.asarray(old), np.asarray(nbrs.verlet.reference))
        assert pair_set(nbrs, len(atoms)) == reference(atoms, CUTOFF)
    assert rebuilt >= 2 and not bool(nbrs.overflow)


def test_a_full_bin_and_a_compressed_box_overflow_and_grow():
    atoms = systems()["cubic"]
    system = System.from_atoms(atoms)
    pos, cell = jnp.asarray(atoms.positions), jnp.asarray(system.cell)
    spec = nl.allocate(atoms.positions, system.cell, system.pbc, CUTOFF, SKIN, search="cells")
    small = spec._replace(bin_capacity=spec.bin_capacity // 3)
    nbrs = build(pos, cell, small)
    assert bool(nbrs.overflow) and int(nbrs.verlet.fullest_bin) > small.bin_capacity
    grown = nl.grow(small, nbrs)
    assert grown.bin_capacity > int(nbrs.verlet.fullest_bin)
    assert not bool(build(pos, cell, grown).overflow)

    # The box shrinks by 20 %: the 6 bins per axis are now narrower than the list radius.
    atoms.set_cell(atoms.cell * 0.8, scale_atoms=True)
    pos, cell = jnp.asarray(atoms.positions), jnp.asarray(np.asarray(atoms.cell))
    squeezed = build(pos, cell, spec)
    assert bool(squeezed.overflow) and not bool(squeezed.verlet.bins_ok)
    regrid = nl.grow(spec, squeezed)
    assert regrid.bins is not None and regrid.bins[0] < spec.bins[0]
    for _ in range(3):  # as the engine does: grow until a build fits
        nbrs = build(pos, cell, regrid)
        if not bool(nbrs.overflow):
            break
        regrid = nl.grow(regrid, nbrs)
    assert not bool(nbrs.overflow)
    assert pair_set(nbrs, len(atoms)) == reference(atoms, CUTOFF)


def test_auto_picks_cell_lists_only_where_they_pay():
    small = systems()["cubic"][:100]
    big = systems()["cubic"]
    for atoms, expect in ((small, False), (big.repeat((2, 1, 1)), True)):
        system = System.from_atoms(atoms)
        spec = nl.allocate(atoms.positions, system.cell, system.pbc, CUTOFF, SKIN)
        assert (spec.bins is not None) == expect
    with pytest.raises(ValueError, match="too small"):
        si = bulk("Si", "diamond", a=5.43)
        nl.allocate(si.positions, np.asarray(si.cell), si.pbc, CUTOFF, SKIN, search="cells")
