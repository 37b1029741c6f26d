"""Relaxation (FIRE, ASE), minima de-duplication and the stability monitor, on Lennard-Jones
clusters (reduced units: epsilon = 1 eV, sigma = 1 Å) with known minima."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.lj import LennardJones
from scipy.spatial.transform import Rotation

import so3krates  # noqa: F401  (float64)
from so3krates.md.minima import MinimaSet, kabsch_rmsd
from so3krates.md.relax import fire_relax, relax_ase
from so3krates.md.stability import (
    Monitor,
    StabilityCriteria,
    check_collapse,
    check_stability,
    find_bonds,
    max_bond_deviation,
    min_distance_ratio,
    temperature_limit,
)

LJ13_GLOBAL = -44.326801  # Wales & Doye (1997), Cambridge Cluster Database
LJ7_MINIMA = [-16.505384, -15.935, -15.593, -15.533]  # the four minima of LJ7


def lj_energy(positions: jnp.ndarray, mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """All-pairs LJ energy in eV of (N, 3) positions; ``mask`` (N,) excludes atoms."""
    n = positions.shape[0]
    i, j = jnp.triu_indices(n, 1)
    r2 = jnp.sum((positions[j] - positions[i]) ** 2, axis=-1)
    inv6 = 1.0 / r2**3
    e = 4.0 * (inv6**2 - inv6)
    if mask is not None:
        e = jnp.where(mask[i] & mask[j], e, 0.0)
    return jnp.sum(e)


def lj_forces(positions):
    e, g = jax.value_and_grad(lj_energy)(positions)
    return e, -g


def icosahedron(nn: float = 1.1) -> np.ndarray:
    phi = (1 + 5**0.5) / 2
    v = np.array([[0, s1, s2 * phi] for s1 in (1, -1) for s2 in (1, -1)], float)
    v = np.concatenate([v, np.roll(v, 1, axis=1), np.roll(v, 2, axis=1)])
    v *= nn / np.linalg.norm(v, axis=1, keepdims=True)
    return np.vstack([np.zeros(3), v])


def random_cluster(rng, n: int, radius: float = 1.1, dmin: float = 0.9) -> np.ndarray:
    """Random compact start: atoms placed one by one in a sphere, no pair closer than dmin."""
    pos = []
    while len(pos) < n:
        x = rng.uniform(-radius, radius, 3)
        if np.linalg.norm(x) <= radius and all(np.linalg.norm(x - p) >= dmin for p in pos):
            pos.append(x)
    return np.array(pos)


def random_copy(rng, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotated, translated and permuted copy of (N, 3) x, and the permutation."""
    perm = rng.permutation(len(x))
    r = Rotation.random(random_state=rng).as_matrix()
    return x[perm] @ r.T + rng.normal(size=3) * 3.0, perm


# --- FIRE ------------------------------------------------------------------------------------


def test_fire_lj13_global_minimum():
    rng = np.random.default_rng(0)
    start = icosahedron() + 0.05 * rng.normal(size=(13, 3))
    res = fire_relax(lj_forces, start, fmax=1e-3, max_steps=2000)
    assert bool(res.converged)
    assert float(res.fmax) <= 1e-3
    assert 0 < int(res.steps) < 2000
    assert abs(float(res.energy) - LJ13_GLOBAL) < 1e-5
    # The returned energy and fmax belong to the returned positions.
    e, f = lj_forces(res.positions)
    assert float(e) == pytest.approx(float(res.energy), abs=1e-12)
    assert float(jnp.linalg.norm(f, axis=1).max()) == pytest.approx(float(res.fmax), abs=1e-12)


def test_fire_reproduces_ase_fire_step_by_step():
    # Same update rule and parameters as ase.optimize.FIRE (unit masses). The displacement caps
    # differ by design (ASE caps the norm of the whole step, we cap each atom's), so compare
    # with a cap that never triggers, over a fixed number of steps.
    rng = np.random.default_rng(7)
    x = icosahedron() + 0.03 * rng.normal(size=(13, 3))
    calc = LennardJones(epsilon=1.0, sigma=1.0, rc=1e3)
    ase_res = relax_ase(Atoms("Ar13", positions=x), calc, optimizer="FIRE", fmax=1e-8, steps=60, maxstep=100.0)
    ours = fire_relax(lj_forces, x, fmax=1e-8, max_steps=60, maxstep=100.0)
    assert ase_res.steps == int(ours.steps) == 60 and not ase_res.converged
    np.testing.assert_allclose(np.asarray(ours.positions), ase_res.positions, atol=1e-10)
    assert float(ours.energy) == pytest.approx(ase_res.energy, abs=1e-9)


def test_fire_batch_equals_separate_runs():
    rng = np.random.default_rng(1)
    # Different perturbation sizes: the structures converge after different numbers of steps;
    # the last one starts already converged (exact minimum from a previous relaxation).
    exact = fire_relax(lj_forces, icosahedron(), fmax=1e-6).positions
    starts = np.stack([icosahedron() + s * rng.normal(size=(13, 3)) for s in (0.02, 0.08, 0.15)] + [np.asarray(exact)])
    batch = fire_relax(lj_forces, starts, fmax=1e-3)
    assert batch.positions.shape == (4, 13, 3) and batch.converged.shape == (4,)
    assert bool(batch.converged.all())
    steps = [int(s) for s in batch.steps]
    assert steps[3] == 0 and len(set(steps)) == 4
    for k in range(4):
        single = fire_relax(lj_forces, starts[k], fmax=1e-3)
        assert int(single.steps) == steps[k]
        np.testing.assert_allclose(np.asarray(single.positions), np.asarray(batch.positions[k]), atol=1e-10)
        assert float(single.energy) == pytest.approx(float(batch.energy[k]), abs=1e-10)
    # The converged-at-start structure did not move at all.
    np.testing.assert_array_equal(np.asarray(batch.positions[3]), starts[3])

    # A step budget too small for the slowest structure: per-structure flags.
    limit = sorted(steps)[2]
    capped = fire_relax(lj_forces, starts, fmax=1e-3, max_steps=limit)
    expect = [s <= limit for s in steps]
    assert [bool(c) for c in capped.converged] == expect
    assert [int(s) for s in capped.steps] == [min(s, limit) for s in steps]
    assert all(float(f) > 1e-3 for f, c in zip(capped.fmax, expect) if not c)


def test_fire_padding_atoms_do_not_move():
    rng = np.random.default_rng(2)
    real = icosahedron() + 0.05 * rng.normal(size=(13, 3))
    # Two padding atoms close enough to feel (and exert) LJ forces: the force function does not
    # know about padding, only the mask does.
    pad = np.array([[2.2, 0.0, 0.0], [0.0, 2.3, 0.3]])
    start = np.vstack([real, pad])
    mask = np.array([True] * 13 + [False] * 2)
    assert float(jnp.linalg.norm(lj_forces(start)[1][13:], axis=1).min()) > 0.1
    res = fire_relax(lj_forces, start, fmax=1e-3, atom_mask=mask)
    assert bool(res.converged)
    np.testing.assert_array_equal(np.asarray(res.positions[13:]), pad)
    # Converged on the real atoms only, with the padding atoms still pushing.
    f = np.asarray(lj_forces(res.positions)[1])
    assert np.linalg.norm(f[:13], axis=1).max() <= 1e-3
    assert np.linalg.norm(f[13:], axis=1).max() > 1e-2


def test_relax_ase_bfgs():
    rng = np.random.default_rng(3)
    atoms = Atoms("Ar13", positions=icosahedron() + 0.05 * rng.normal(size=(13, 3)))
    before = atoms.positions.copy()
    calc = LennardJones(epsilon=1.0, sigma=1.0, rc=50.0)
    res = relax_ase(atoms, calc, optimizer="BFGS", fmax=1e-3, steps=500)
    assert res.converged and res.fmax <= 1e-3 and 0 < res.steps < 500
    assert abs(res.energy - LJ13_GLOBAL) < 1e-4
    np.testing.assert_array_equal(atoms.positions, before)  # input untouched
    assert np.linalg.norm(res.atoms.get_forces(), axis=1).max() <= 1e-3
    # The JAX FIRE and ASE end in the same minimum.
    ours = fire_relax(lj_forces, before, fmax=1e-3)
    assert kabsch_rmsd(np.asarray(ours.positions), res.positions, permute=False) < 1e-2
    with pytest.raises(ValueError):
        relax_ase(atoms, calc, optimizer="NoSuchOptimizer")


# --- minima ----------------------------------------------------------------------------------


def test_kabsch_rmsd_permuted_copy_and_distinct_minimum():
    rng = np.random.default_rng(4)
    eth = molecule("CH3CH2OH")
    numbers = eth.numbers
    # Methyl/methylene H atoms permuted among themselves only (elements stay in place).
    x = eth.positions.copy()
    h = np.flatnonzero(numbers == 1)
    p = np.arange(len(x))
    p[h] = rng.permutation(h)
    moved = x[p] @ Rotation.random(random_state=rng).as_matrix().T + [1.0, -2.0, 0.5]
    assert kabsch_rmsd(x, moved, numbers, permute=True) <= 1e-8
    assert kabsch_rmsd(x, moved, numbers, permute=False) > 0.1

    lj13 = np.asarray(fire_relax(lj_forces, icosahedron(), fmax=1e-6).positions)
    copy, _ = random_copy(rng, lj13)
    assert kabsch_rmsd(lj13, copy) <= 1e-8
    # A genuinely different minimum (LJ7: pentagonal bipyramid vs capped octahedron) is far;
    # a moved copy of the pentagonal bipyramid (a symmetric top) is found.
    lj7 = _lj7_minima()
    e = np.asarray(_LJ7_CACHE["e"])
    bipyramid, octahedron = (lj7[int(np.argmin(np.abs(e - ref)))] for ref in LJ7_MINIMA[:2])
    assert kabsch_rmsd(bipyramid, octahedron) > 0.1
    copy, _ = random_copy(rng, bipyramid)
    assert kabsch_rmsd(bipyramid, copy) <= 1e-8


_LJ7_CACHE: dict = {}


def _lj7_minima():
    """Relax 64 random LJ7 starts in one batch; returns the relaxed true minima (Hessian
    positive semi-definite with exactly 6 zero modes), sorted by energy."""
    if "x" in _LJ7_CACHE:
        return _LJ7_CACHE["x"]
    rng = np.random.default_rng(5)
    starts = np.stack([random_cluster(rng, 7) for _ in range(64)])
    res = fire_relax(lj_forces, starts, fmax=1e-5, max_steps=5000)
    assert bool(res.converged.all())
    hess = jax.vmap(jax.hessian(lj_energy))(res.positions).reshape(64, 21, 21)
    eig = np.linalg.eigvalsh(np.asarray(hess))
    minimum = (eig[:, 6] > 1e-3) & (np.abs(eig[:, :6]).max(axis=1) < 1e-4)
    order = np.argsort(np.asarray(res.energy))
    out = [(np.asarray(res.positions[k]), float(res.energy[k])) for k in order if minimum[k]]
    _LJ7_CACHE["x"] = [x for x, _ in out]
    _LJ7_CACHE["e"] = [e for _, e in out]
    return _LJ7_CACHE["x"]


def test_minima_set_lj7_has_four_minima(tmp_path):
    positions = _lj7_minima()
    energies = _LJ7_CACHE["e"]
    numbers = np.full(7, 18)
    ms = MinimaSet(energy_tol=1e-3, rmsd_tol=0.1)
    for t, (x, e) in enumerate(zip(positions, energies)):
        ms.add(x, e, numbers, time=10.0 * t)
    found = sorted(ms.energies)
    assert len(found) == 4, found
    np.testing.assert_allclose(found, sorted(LJ7_MINIMA), atol=1e-3)
    assert sum(ms.counts) == len(positions)
    assert ms.found_at[0] == 0.0 and sorted(ms.found_at) == ms.found_at  # first-seen order

    # Rotated, translated and permuted copies of every minimum are recognised.
    rng = np.random.default_rng(6)
    for k in range(len(ms)):
        copy, _ = random_copy(rng, ms.positions[k])
        index, new = ms.add(copy, ms.energies[k] + 2e-4, numbers)
        assert (index, new) == (k, False)
    assert len(ms) == 4
    # Same shape but energy outside the tolerance: a new entry.
    index, new = ms.add(ms.positions[0], ms.energies[0] + 5e-3, numbers)
    assert new and index == 4

    # The fourth minimum (C2) is chiral: keeping enantiomers apart splits it, and only it.
    strict = MinimaSet(allow_reflection=False)
    for x, e in zip(positions, energies):
        strict.add(x, e, numbers)
    assert len(strict) == 5
    np.testing.assert_allclose(sorted(strict.energies)[-2:], [LJ7_MINIMA[3]] * 2, atol=1e-3)

    path = tmp_path / "minima.xyz"
    ms.write(path, numbers)
    import ase.io

    frames = ase.io.read(path, index=":")
    np.testing.assert_allclose([f.get_potential_energy() for f in frames], sorted(ms.energies), atol=1e-8)
    assert sum(f.info["count"] for f in frames) == sum(ms.counts)
    assert all(len(f) == 7 and (f.numbers == 18).all() for f in frames)
    assert '"count"' in ms.to_json()


# --- stability --------------------------------------------------------------------------------


def test_find_bonds_ethanol_and_periodic_silicon():
    eth = molecule("CH3CH2OH")
    bonds = find_bonds(eth.numbers, eth.positions)
    sym = eth.get_chemical_symbols()
    pairs = sorted(tuple(sorted((sym[i], sym[j]))) for i, j in np.asarray(bonds.pairs))
    assert pairs == sorted([("C", "C"), ("C", "O"), ("H", "O")] + [("C", "H")] * 5)
    assert np.all(np.asarray(bonds.pairs)[:, 0] < np.asarray(bonds.pairs)[:, 1])
    d = np.linalg.norm(eth.positions[bonds.pairs[:, 1]] - eth.positions[bonds.pairs[:, 0]], axis=1)
    np.testing.assert_allclose(np.asarray(bonds.reference), d)

    si = bulk("Si", "diamond", a=5.43)  # 2 atoms, each with 4 bonds, all across images
    b = find_bonds(si.numbers, si.positions, si.cell.array, si.pbc)
    assert len(b.reference) == 4
    np.testing.assert_allclose(np.asarray(b.reference), 5.43 * np.sqrt(3) / 4, rtol=1e-10)
    assert float(max_bond_deviation(jnp.asarray(si.positions), jnp.asarray(si.cell.array), b)) < 1e-12
    big = si.repeat(2)
    assert len(find_bonds(big.numbers, big.positions, big.cell.array).reference) == 32


def test_check_stability_flags_stretched_bond_and_nan_under_jit_and_vmap():
    eth = molecule("CH3CH2OH")
    bonds = find_bonds(eth.numbers, eth.positions)
    x0 = eth.positions
    # Stretch the O-H bond: move the hydroxyl H along the bond (it has no other bond).
    o, h = 2, 3
    unit = (x0[h] - x0[o]) / np.linalg.norm(x0[h] - x0[o])
    stretched, mild = x0.copy(), x0.copy()
    stretched[h] += 0.6 * unit
    mild[h] += 0.4 * unit
    f0 = np.zeros_like(x0)
    f_nan = f0.copy()
    f_nan[4, 1] = np.nan
    f_big = f0.copy()
    f_big[0] = [60.0, 0.0, 0.0]
    pos = np.stack([x0, stretched, mild, x0, x0])
    forces = np.stack([f0, f0, f0, f_nan, f_big])
    cell = np.zeros((3, 3))

    crit = StabilityCriteria()
    assert crit.max_bond_deviation == 0.5
    for k in range(5):
        ok = check_stability(jnp.asarray(pos[k]), jnp.asarray(forces[k]), jnp.asarray(cell), bonds, crit)
        assert ok.shape == () and ok.dtype == jnp.bool_
    fn = jax.jit(jax.vmap(check_stability, in_axes=(0, 0, None, None, None)))
    ok = fn(jnp.asarray(pos), jnp.asarray(forces), jnp.asarray(cell), bonds, crit)
    assert [bool(v) for v in ok] == [True, False, True, False, False]
    dev = jax.jit(jax.vmap(max_bond_deviation, in_axes=(0, None, None)))(jnp.asarray(pos), jnp.asarray(cell), bonds)
    np.testing.assert_allclose(np.asarray(dev[:3]), [0.0, 0.6, 0.4], atol=1e-12)
    # Looser criteria (a pytree: traced, no recompilation needed) accept the stretched bond.
    loose = StabilityCriteria(max_bond_deviation=0.7, max_force=100.0)
    ok = fn(jnp.asarray(pos), jnp.asarray(forces), jnp.asarray(cell), bonds, loose)
    assert [bool(v) for v in ok] == [True, True, True, False, True]

    # No bonds (argon far apart): stable, deviation zero, also under jit.
    ar = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    nb = find_bonds(np.full(3, 18), ar)
    assert nb.pairs.shape == (0, 2)
    assert float(jax.jit(max_bond_deviation)(jnp.asarray(ar), jnp.zeros((3, 3)), nb)) == 0.0
    assert bool(jax.jit(check_stability)(jnp.asarray(ar), jnp.zeros((3, 3)), jnp.zeros((3, 3)), nb, crit))


def test_criteria_choose_bonds_for_molecules_and_collapse_for_periodic_structures():
    auto = StabilityCriteria()
    assert auto.resolve([False] * 3) == "bonds"
    assert auto.resolve([True, True, False]) == "collapse"  # a slab
    assert auto.resolve(True) == "collapse"
    assert StabilityCriteria(mode="bonds").resolve(True) == "bonds"
    assert StabilityCriteria(mode="collapse").resolve(False) == "collapse"
    with pytest.raises(ValueError, match="unknown stability monitor"):
        StabilityCriteria(mode="bond")


def test_molecules_keep_the_bond_criterion_whatever_the_collapse_settings():
    """Without periodic directions the monitor is Fu et al.'s bond criterion, unchanged: the
    collapse and temperature settings (here absurd ones) play no part."""
    eth = molecule("CH3CH2OH")
    x0 = eth.positions
    o, h = 2, 3
    stretched = x0.copy()
    stretched[h] += 0.6 * (x0[h] - x0[o]) / np.linalg.norm(x0[h] - x0[o])
    absurd = StabilityCriteria(min_distance_factor=10.0, max_temperature_factor=0.0)
    mon = Monitor(absurd, eth.numbers, x0, np.zeros((3, 3)), [False] * 3, 300.0, 24)
    assert mon.mode == "bonds" and mon.max_temperature == np.inf
    bonds = find_bonds(eth.numbers, x0)
    np.testing.assert_array_equal(np.asarray(mon.bonds.pairs), np.asarray(bonds.pairs))
    cell, f0 = jnp.zeros((3, 3)), jnp.zeros_like(jnp.asarray(x0))
    fn = jax.jit(lambda x, t: mon(x, f0, cell, None, t))
    for x, expected in ((x0, True), (stretched, False)):
        old = bool(check_stability(jnp.asarray(x), f0, cell, bonds, StabilityCriteria()))
        assert old == expected
        assert bool(fn(jnp.asarray(x), 1e6)) == old  # a temperature far above 0 x 300 K
    assert "bond" in mon.diagnose(stretched, f0, cell, None, 300.0)
    assert mon.diagnose(x0, f0, cell, None, 1e6) is None


def _host_pairs(atoms, cutoff):
    from so3krates.neighbours import neighbour_list

    nl = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    return nl


def test_collapse_criterion_flags_close_atoms_heat_and_nan_under_jit_and_vmap():
    from so3krates.md.system import System
    from so3krates.neighbours import verlet

    si = bulk("Si", "diamond", a=5.431, cubic=True)  # 8 atoms, bonds across the boundary
    radii = jnp.full(8, 1.11)  # ase.data.covalent_radii of Si
    cell = si.cell.array
    d_nn = 5.431 * np.sqrt(3) / 4
    system = System.from_atoms(si)
    spec = verlet.allocate(si.positions, system.cell, system.pbc, 4.0, 0.5)
    # Atom 0 and its bonded neighbour atom 1 (at a/4 (1, 1, 1)) pushed together along the bond.
    unit = np.ones(3) / np.sqrt(3)
    frames = {}
    for name, d in (("start", d_nn), ("close", 1.2), ("collapsed", 1.0)):
        x = si.positions.copy()
        x[1] = x[0] + d * unit
        frames[name] = x
    host, device = [], []
    for name, x in frames.items():
        nbrs = verlet.build(jnp.asarray(x), jnp.asarray(system.cell), spec)
        # The engine's lists (halves layout, padding) and a full host list give the same ratio.
        device.append(float(min_distance_ratio(jnp.asarray(x), jnp.asarray(cell), nbrs, radii, halves=True)))
        atoms = si.copy()
        atoms.positions = x
        host.append(float(min_distance_ratio(jnp.asarray(x), jnp.asarray(cell), _host_pairs(atoms, 4.0), radii)))
    np.testing.assert_allclose(device, host, rtol=1e-12)
    np.testing.assert_allclose(device, [d_nn / 2.22, 1.2 / 2.22, 1.0 / 2.22], rtol=1e-12)

    crit = StabilityCriteria()
    nbrs = verlet.build(jnp.asarray(frames["start"]), jnp.asarray(system.cell), spec)
    f0 = np.zeros((8, 3))
    f_nan, f_big = f0.copy(), f0.copy()
    f_nan[2, 0] = np.nan
    f_big[3] = [0.0, 60.0, 0.0]
    # frames: start, close (0.54 of the radii: kept), collapsed (0.45), hot, NaN force, big force
    pos = np.stack([frames["start"], frames["close"], frames["collapsed"]] + [frames["start"]] * 3)
    forces = np.stack([f0, f0, f0, f0, f_nan, f_big])
    temps = np.array([1200.0, 1200.0, 1200.0, 3700.0, 1200.0, 1200.0])
    # The start list still holds the moved pair (1.2 Å, 1.0 Å are within its cutoff).
    fn = jax.jit(jax.vmap(lambda x, f, t, c: check_collapse(x, f, jnp.asarray(cell), nbrs, radii, t,
                                                            3600.0, c, halves=True),
                          in_axes=(0, 0, 0, None)))
    ok = fn(jnp.asarray(pos), jnp.asarray(forces), jnp.asarray(temps), crit)
    assert [bool(v) for v in ok] == [True, True, False, False, False, False]
    # Thresholds are traced: a stricter factor flags the close pair too, without recompiling.
    ok = fn(jnp.asarray(pos), jnp.asarray(forces), jnp.asarray(temps), StabilityCriteria(min_distance_factor=0.6))
    assert [bool(v) for v in ok] == [True, False, False, False, False, False]
    # NaN positions are unstable; a list of padding only has no pairs (inf): stable.
    nan_x = frames["start"].copy()
    nan_x[5, 2] = np.nan
    assert not bool(check_collapse(jnp.asarray(nan_x), jnp.asarray(f0), jnp.asarray(cell), nbrs, radii,
                                   300.0, 900.0, crit, halves=True))
    empty = nbrs._replace(centers=jnp.full_like(nbrs.centers, 8), neighbours=jnp.full_like(nbrs.neighbours, 8))
    assert float(min_distance_ratio(jnp.asarray(frames["start"]), jnp.asarray(cell), empty, radii)) == np.inf

    mon = Monitor(crit, si.numbers, frames["start"], cell, si.pbc, 1200.0, system.degrees_of_freedom)
    assert mon.mode == "collapse" and mon.bonds is None
    assert "collapse" in mon.diagnose(frames["collapsed"], f0, cell, nbrs, 1200.0)
    assert "temperature" in mon.diagnose(frames["start"], f0, cell, nbrs, 1e5)
    assert "force" in mon.diagnose(frames["start"], f_big, cell, nbrs, 1200.0)
    assert mon.diagnose(frames["close"], f0, cell, nbrs, 1200.0) is None


def test_temperature_limit_is_a_multiple_of_the_run_temperature_above_fluctuations():
    from scipy.stats import chi2

    # Large cells: factor x reference (a 512-atom cell fluctuates by a few per cent).
    assert temperature_limit(3.0, 1200.0, 3 * 512 - 3) == pytest.approx(3600.0)
    # A few atoms: raised to where a thermalised cell's chance per frame is 1e-9.
    for dof in (3, 6, 21):
        limit = temperature_limit(3.0, 1000.0, dof)
        assert limit > 3000.0
        assert chi2.sf(limit / 1000.0 * dof, dof) == pytest.approx(1e-9, rel=1e-6)
    assert temperature_limit(3.0, 0.0, 189) == np.inf  # no temperature to refer to
    assert temperature_limit(np.inf, 300.0, 189) == np.inf  # switched off
