"""Exact properties of the SO3krates potential: symmetries, forces, padding, smoothness."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from conftest import cell_and_molecule, ethanol_frames, predict_single, small_config
from so3krates.batching import Capacity, pack, round_up, single_graph
from so3krates.model_io import build_module, init_params
from so3krates.neighbours import NeighbourList, neighbour_list, reverse_halves
from so3krates.potential import make_predict_fn


def random_orthogonal(seed: int, reflect: bool) -> np.ndarray:
    q = Rotation.random(random_state=seed).as_matrix()
    return q @ np.diag([1.0, 1.0, -1.0]) if reflect else q


# radial_knots > 0: radial filters from spline tables (inference), same exact properties.
@pytest.mark.parametrize("dtype,tol,knots", [("float64", 1e-10, 0), ("float32", 1e-5, 0),
                                             ("float64", 1e-10, 256)])
def test_invariance_and_equivariance(tiny_predict, dtype, tol, knots):
    predict, params, cfg = tiny_predict(dtype, radial_knots=knots)
    data = ethanol_frames(1)
    z, r = data.numbers[0], data.positions[0]
    args = (np.zeros((3, 3)), np.zeros(3, bool), cfg.cutoff, np.dtype(dtype))
    e0, f0 = predict_single(predict, params, z, r, *args)
    assert np.abs(f0).max() > 1e-3, "forces too small for a meaningful test"
    rng = np.random.default_rng(0)
    for seed, reflect in [(1, False), (2, True), (3, False)]:
        q = random_orthogonal(seed, reflect)
        shift = rng.normal(size=3) * 3.0
        e1, f1 = predict_single(predict, params, z, r @ q.T + shift, *args)
        assert abs(e1 - e0) <= tol * abs(e0)
        assert np.abs(f1 - f0 @ q.T).max() <= tol * np.abs(f0).max()
    perm = rng.permutation(len(z))
    e2, f2 = predict_single(predict, params, z[perm], r[perm], *args)
    assert abs(e2 - e0) <= tol * abs(e0)
    assert np.abs(f2 - f0[perm]).max() <= tol * np.abs(f0).max()


@pytest.mark.parametrize("knots", [0, 256])
def test_periodic_invariance(tiny_predict, knots):
    """A periodic cell: rotating positions and cell together, and wrapping atoms, change nothing."""
    predict, params, cfg = tiny_predict("float64", radial_knots=knots)
    rng = np.random.default_rng(1)
    cell = np.array([[6.0, 0.0, 0.0], [1.0, 5.5, 0.0], [0.5, 0.7, 6.2]])
    frac = rng.uniform(size=(8, 3))
    z = np.array([1, 6, 8, 1, 6, 1, 8, 6])
    r = frac @ cell
    pbc = np.ones(3, bool)
    e0, f0 = predict_single(predict, params, z, r, cell, pbc, cfg.cutoff, np.float64)
    q = random_orthogonal(5, False)
    e1, f1 = predict_single(predict, params, z, r @ q.T, cell @ q.T, pbc, cfg.cutoff, np.float64)
    assert abs(e1 - e0) <= 1e-10 * abs(e0)
    assert np.abs(f1 - f0 @ q.T).max() <= 1e-10 * np.abs(f0).max()
    # Wrapping an atom into a neighbouring image is the same structure.
    r2 = r.copy()
    r2[0] += cell[1] - cell[2]
    e2, f2 = predict_single(predict, params, z, r2, cell, pbc, cfg.cutoff, np.float64)
    assert abs(e2 - e0) <= 1e-10 * abs(e0)
    assert np.abs(f2 - f0).max() <= 1e-10 * np.abs(f0).max()
    assert np.abs(f0.sum(axis=0)).max() < 1e-10  # momentum conservation


@pytest.mark.parametrize("knots", [0, 256])
def test_forces_are_minus_gradient(tiny_predict, knots):
    predict, params, cfg = tiny_predict("float64", radial_knots=knots)
    data = ethanol_frames(1)
    z, r = data.numbers[0], data.positions[0]
    args = (np.zeros((3, 3)), np.zeros(3, bool), cfg.cutoff, np.float64)
    _, f = predict_single(predict, params, z, r, *args)
    h = 1e-5
    fd = np.zeros_like(r)
    for a in range(len(z)):
        for k in range(3):
            rp, rm = r.copy(), r.copy()
            rp[a, k] += h
            rm[a, k] -= h
            fd[a, k] = -(predict_single(predict, params, z, rp, *args)[0]
                         - predict_single(predict, params, z, rm, *args)[0]) / (2 * h)
    assert np.abs(fd - f).max() <= 1e-7 * max(np.abs(f).max(), 1.0)


def test_padding_does_not_change_results(tiny_predict):
    """Three structures of different sizes in one padded batch equal their single results."""
    predict, params, cfg = tiny_predict("float64")
    data = ethanol_frames(3)
    numbers = [data.numbers[0], data.numbers[1][:6], data.numbers[2][:8]]
    positions = [data.positions[0], data.positions[1][:6], data.positions[2][:8] + 50.0]
    cells = np.zeros((3, 3, 3))
    nls = [neighbour_list(r, c, np.zeros(3, bool), cfg.cutoff) for r, c in zip(positions, cells)]
    cap = Capacity(atoms=40, pairs=512, structures=6)
    graph = pack(numbers, positions, cells, nls, cap, dtype=np.float64)
    out = predict(params, graph)
    offset = 0
    for k, (z, r) in enumerate(zip(numbers, positions)):
        e, f = predict_single(predict, params, z, r, np.zeros((3, 3)), np.zeros(3, bool),
                              cfg.cutoff, np.float64)
        assert abs(float(out.energy[k]) - e) <= 1e-12 * abs(e)
        np.testing.assert_allclose(np.asarray(out.forces[offset:offset + len(z)]), f,
                                   rtol=0, atol=1e-12 * np.abs(f).max())
        offset += len(z)
    assert np.all(np.asarray(out.energy[3:]) == 0.0)
    assert np.all(np.asarray(out.forces[offset:]) == 0.0)
    assert np.all(np.isfinite(np.asarray(out.forces)))


def test_mixed_periodic_and_molecule_batch(tiny_predict):
    """A periodic crystal and a molecule in one padded batch equal their single results."""
    predict, params, cfg = tiny_predict("float64")
    data = ethanol_frames(1)
    rng = np.random.default_rng(2)
    cell = np.array([[6.0, 0.0, 0.0], [1.0, 5.5, 0.0], [0.5, 0.7, 6.2]])
    crystal_z = np.array([1, 6, 8, 1, 6, 1, 8, 6])
    crystal_r = rng.uniform(size=(8, 3)) @ cell
    numbers = [crystal_z, data.numbers[0]]
    positions = [crystal_r, data.positions[0]]
    cells = np.stack([cell, np.zeros((3, 3))])
    pbcs = [np.ones(3, bool), np.zeros(3, bool)]
    nls = [neighbour_list(r, c, p, cfg.cutoff) for r, c, p in zip(positions, cells, pbcs)]
    cap = Capacity(atoms=24, pairs=round_up(sum(len(n.centers) for n in nls) + 10, 64), structures=3)
    out = predict(params, pack(numbers, positions, cells, nls, cap, dtype=np.float64))
    offset = 0
    for k, (z, r, c, p) in enumerate(zip(numbers, positions, cells, pbcs)):
        e, f = predict_single(predict, params, z, r, c, p, cfg.cutoff, np.float64)
        assert abs(float(out.energy[k]) - e) <= 1e-12 * abs(e)
        np.testing.assert_allclose(np.asarray(out.forces[offset:offset + len(z)]), f,
                                   rtol=0, atol=1e-12 * np.abs(f).max())
        offset += len(z)


@pytest.mark.parametrize("cutoff_fn", ["cosine", "polynomial"])
def test_smooth_at_cutoff(tiny_predict, cutoff_fn):
    """Energy and forces are continuous when a neighbour crosses the cutoff."""
    predict, params, cfg = tiny_predict("float64", cutoff_fn=cutoff_fn)
    z = np.array([6, 8, 1])
    base = np.array([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    args = (np.zeros((3, 3)), np.zeros(3, bool), cfg.cutoff, np.float64)

    def at(x):
        r = base.copy()
        r[2] = [0.6, x, 0.0]  # distance to atom 1 crosses the cutoff first
        return predict_single(predict, params, z, r, *args)

    d_cross = np.sqrt(cfg.cutoff**2 - 0.6**2)
    jumps = []
    for eps in (1e-3, 1e-5):
        e_in, f_in = at(d_cross - eps)
        e_out, f_out = at(d_cross + eps)
        jumps.append((abs(e_out - e_in), np.abs(f_out - f_in).max()))
    # Across the cutoff, energy and forces change at least linearly with the step: a 100x
    # smaller step gives a >= 50x smaller jump. A discontinuity would give equal jumps.
    assert jumps[1][0] < 1e-8
    assert jumps[1][0] <= jumps[0][0] / 50 or jumps[1][0] < 1e-12
    assert jumps[1][1] <= jumps[0][1] / 50


def test_zero_output_init_starts_from_reference_energies():
    """``output_init="zeros"``: the untrained model predicts the reference energies exactly and
    zero forces; the default starts from a random, position-dependent energy."""
    data = ethanol_frames(1)
    z, r = data.numbers[0], data.positions[0]
    reference = np.zeros(119)
    reference[[1, 6, 8]] = [-13.6, -1029.5, -2041.3]
    e_ref = reference[z].sum()
    for init in ("zeros", "lecun_normal"):
        cfg = small_config("float64", output_init=init, features=16, num_layers=1,
                           degrees=[1, 2], num_radial=8)
        graph, _ = single_graph(z, r, np.zeros((3, 3)), np.zeros(3, bool), cfg.cutoff,
                                dtype=np.float64)
        module = build_module(cfg, energy_scale=1.0)
        out = jax.jit(make_predict_fn(module, reference))(init_params(module, graph, 0), graph)
        forces = np.asarray(out.forces[: len(z)])
        if init == "zeros":
            assert abs(float(out.energy[0]) - e_ref) <= 1e-14 * abs(e_ref)
            assert np.all(forces == 0.0)
        else:
            assert abs(float(out.energy[0]) - e_ref) > 1e-3
            assert np.abs(forces).max() > 1e-3


@pytest.mark.parametrize("knots", [0, 256])
def test_pairs_in_any_order_give_the_same_results(tiny_predict, knots):
    """Sorted full lists take the shortcut of evaluating the filters once per couple of pairs
    (``reverse_pair_order``); shuffled pairs and a half list doubled the other way round cannot,
    and must give the same energy and forces (with tables: through the branch whose backward
    pass is recomputed, ``zero_unless``)."""
    predict, params, cfg = tiny_predict("float64", radial_knots=knots)
    data = ethanol_frames(1)
    z, r = data.numbers[0], data.positions[0]
    graph, _ = single_graph(z, r, np.zeros((3, 3)), np.zeros(3, bool), cfg.cutoff,
                            dtype=np.float64)
    ref = predict(params, graph)
    n_real = int(np.sum(graph.pair_mask))
    rng = np.random.default_rng(3)
    shuffled = rng.permutation(len(graph.pair_mask))
    first_of_couples = np.flatnonzero(np.asarray(graph.centers)[:n_real]
                                      < np.asarray(graph.neighbours)[:n_real])
    others = np.setdiff1d(np.arange(len(graph.pair_mask)), first_of_couples)
    # the i < j pairs, then the others in reverse order: every reverse exists, but not where
    # the lookup in sorted keys expects it
    halves = np.concatenate([first_of_couples, others[::-1]])
    for order in (shuffled, halves):
        g = graph._replace(**{k: getattr(graph, k)[order]
                              for k in ("centers", "neighbours", "shifts", "pair_mask")})
        out = predict(params, g)
        assert abs(float(out.energy[0] - ref.energy[0])) <= 1e-12 * abs(float(ref.energy[0]))
        np.testing.assert_allclose(np.asarray(out.forces), np.asarray(ref.forces), rtol=0,
                                   atol=1e-12 * np.abs(np.asarray(ref.forces)).max())


def test_halves_layout_gives_the_same_results(tiny_predict):
    """A batch packed in the halves layout (pair P/2 + k the reverse of pair k) gives the
    results of the sorted layout, through the default network (which recognises the layout)
    and through the one told so (``pair_halves``, no fallback compiled). The batch holds a
    small triclinic cell (several images of one pair: reverses differ in their shifts), a
    molecule and padding. Told so about pairs that are not in that layout, it returns NaN
    energies and forces."""
    predict, params, cfg = tiny_predict("float64")
    predict_halves, _, _ = tiny_predict("float64", pair_halves=True)
    numbers, positions, cells, _, nls = cell_and_molecule(cfg.cutoff)
    halves = [reverse_halves(nl) for nl in nls]
    for nl, order in zip(nls, halves):
        h = len(order) // 2
        first, second = order[:h], order[h:]
        assert sorted(order) == list(range(len(nl.centers)))
        np.testing.assert_array_equal(nl.centers[first], nl.neighbours[second])
        np.testing.assert_array_equal(nl.neighbours[first], nl.centers[second])
        np.testing.assert_array_equal(nl.shifts[first], -nl.shifts[second])
    assert np.any(nls[0].shifts != 0) and np.any(np.bincount(
        nls[0].centers * 4 + nls[0].neighbours) > 1)  # several images of one pair
    cap = Capacity(atoms=24, pairs=round_up(sum(len(n.centers) for n in nls) + 10, 64), structures=3)
    sorted_graph = pack(numbers, positions, cells, nls, cap, dtype=np.float64)
    halves_graph = pack(numbers, positions, cells, nls, cap, dtype=np.float64, halves=halves)
    ref = predict(params, sorted_graph)
    scale = np.abs(np.asarray(ref.forces)).max()
    n_real_atoms = sum(len(z) for z in numbers)
    for out in (predict(params, halves_graph), predict_halves(params, halves_graph)):
        np.testing.assert_allclose(np.asarray(out.energy), np.asarray(ref.energy), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(out.forces), np.asarray(ref.forces), rtol=0,
                                   atol=1e-12 * scale)
    broken = predict_halves(params, sorted_graph)
    assert np.all(np.isnan(np.asarray(broken.energy[:2])))
    assert np.all(np.isnan(np.asarray(broken.forces[:n_real_atoms])))


def test_reverse_halves_needs_every_reverse():
    """A half list (each couple once) has no halves layout."""
    data = ethanol_frames(1)
    nl = neighbour_list(data.positions[0], np.zeros((3, 3)), np.zeros(3, bool), 4.0)
    assert reverse_halves(nl) is not None
    keep = nl.centers < nl.neighbours
    half = NeighbourList(nl.centers[keep], nl.neighbours[keep], nl.shifts[keep])
    assert reverse_halves(half) is None
