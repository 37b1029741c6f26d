"""Euclidean fast attention (``so3krates.model.efa``) in float64.

The Lebedev quadrature against the exact sphere average (sinc) and the phases it resolves;
ERoPE's exact translation invariance; the O(N·M) messages against the O(N²) sinc pair sum
within a bound derived from the quadrature tolerance, under rotations (same bound) and
permutations (exact); padded batches of several structures; and the Flax module: forces equal
to central finite differences, rotation invariance of its energy within the propagated bound,
float32 against float64, and no (N, N) intermediate anywhere in its computation.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import so3krates.model.efa as efa_module
from so3krates.model.efa import (SUPPORTED_DEGREES, EuclideanFastAttention, choose_degree,
                                 efa_messages, efa_messages_direct, erope, lebedev_grid,
                                 linear_frequencies, quadrature_error, resolvable_phase,
                                 taylor_phase)

jax.config.update("jax_enable_x64", True)

TOL = 1e-3  # quadrature tolerance of resolvable_phase (its default)
DEGREE = 17  # 110 directions; resolves θ·d ≤ 11.18
P, F = 4, 6


def random_directions(n: int, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed).normal(size=(n, 3))
    return r / np.linalg.norm(r, axis=1, keepdims=True)


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def molecule(n: int, seed: int) -> np.ndarray:
    """Random positions (n, 3) Å, spread over a few Å like a small organic molecule."""
    return np.random.default_rng(seed).normal(size=(n, 3)) * 1.2


def max_distance(positions: np.ndarray) -> float:
    return float(np.max(np.linalg.norm(positions[:, None] - positions[None], axis=-1)))


def frequencies_for(positions: np.ndarray, degree: int = DEGREE) -> np.ndarray:
    """θ_p with θ_max d_max = 0.9 × the grid's resolvable phase (a margin for directions of r
    that resolvable_phase did not probe)."""
    return linear_frequencies(P, 0.9 * resolvable_phase(degree) / max_distance(positions))


def qkv(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2 * P)), rng.normal(size=(n, 2 * P)), rng.normal(size=(n, F))


def quadrature_bound(q, k, v, structure, atom_mask, tolerance=TOL) -> np.ndarray:
    """Bound on |efa_messages - efa_messages_direct|, (N, F), while every θ_p d_ij is resolved.

    The per-direction kernel is Σ_p cos(θ_p u·r_ij) c_p + sin(θ_p u·r_ij) s_p with
    c_p = (q_ia k_ja + q_ib k_jb)_p; the grid averages the sines to exactly 0 (it holds -u with
    u) and each cosine to sinc within the tolerance, so
    |Δy_if| ≤ tolerance Σ_{j∈s(i)} Σ_p |c_p| |v_jf|.
    """
    n = q.shape[0]
    c = np.einsum("ipt,jpt->ijp", q.reshape(n, P, 2), k.reshape(n, P, 2))
    same = (structure[:, None] == structure[None]) & atom_mask[:, None] & atom_mask[None]
    return tolerance * (np.abs(c).sum(-1) * same) @ np.abs(v)


def single(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(n, np.int32), np.ones(n, bool)


# --- the quadrature and the phases it resolves -------------------------------------------------

def test_lebedev_grid():
    for degree, m in [(3, 6), (11, 50), (17, 110), (131, 5810)]:
        u, w = lebedev_grid(degree)
        assert u.shape == (m, 3) and w.shape == (m,)
        np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-14)
        assert abs(w.sum() - 1.0) < 1e-14
        with pytest.raises(ValueError):
            u[0, 0] = 2.0  # the cached arrays are read-only
    # exact for spherical polynomials up to its degree: <z²> = 1/3, <z⁴> = 1/5, <x²y²z²> = 1/105
    u, w = lebedev_grid(7)
    np.testing.assert_allclose([w @ u[:, 2] ** 2, w @ u[:, 2] ** 4, w @ np.prod(u**2, axis=1)],
                               [1 / 3, 1 / 5, 1 / 105], atol=1e-15)
    with pytest.raises(ValueError, match="no Lebedev grid of degree 4; supported degrees: 3, 5"):
        lebedev_grid(4)


@pytest.mark.parametrize("degree", [5, 11, 17])
def test_quadrature_resolves_sinc_up_to_the_resolvable_phase(degree):
    """Grid average of cos(x u·r̂) (computed here from the grid) = sinc(x) within TOL for all
    x ≤ resolvable_phase, at 300 directions r̂ not among those resolvable_phase probed; at
    1.5 to 2 times that phase the error exceeds 10 TOL; up to taylor_phase (proven) ≤ TOL."""
    phase = resolvable_phase(degree)
    u, w = lebedev_grid(degree)
    r = random_directions(300, seed=7)

    def error(x):
        quad = np.einsum("m,xmd->xd", w, np.cos(x[:, None, None] * (u @ r.T)))
        return np.max(np.abs(quad - np.sin(x)[:, None] / np.maximum(x, 1e-300)[:, None]
                             - (x == 0)[:, None]))

    assert error(np.linspace(0.0, phase, 400)) <= TOL
    assert error(np.linspace(1.5 * phase, 2.0 * phase, 100)) > 10 * TOL
    proven = np.linspace(0.0, taylor_phase(degree, TOL), 100)
    assert quadrature_error(degree, proven, r).max() <= TOL
    assert 0 < taylor_phase(degree, TOL) < phase


def test_resolvable_phase_values():
    """Measured phases grow with the degree and with the tolerance (values: module docstring)."""
    phases = [resolvable_phase(d) for d in SUPPORTED_DEGREES[:12]]
    assert np.all(np.diff(phases) > 0)
    np.testing.assert_allclose([resolvable_phase(5), resolvable_phase(11), resolvable_phase(17)],
                               [1.815, 6.099, 11.178], atol=2e-3)
    assert resolvable_phase(11, 1e-2) > resolvable_phase(11) > resolvable_phase(11, 1e-5)
    with pytest.raises(ValueError, match="tolerance must be positive"):
        resolvable_phase(11, 0.0)


def test_choose_degree():
    assert choose_degree(0.0) == 3
    for x in [0.5, 5.0, 11.178, 11.2, 30.0]:
        d = choose_degree(x)
        i = SUPPORTED_DEGREES.index(d)
        assert resolvable_phase(d) >= x
        assert i == 0 or resolvable_phase(SUPPORTED_DEGREES[i - 1]) < x
    assert choose_degree(5.0) == 11
    largest = resolvable_phase(SUPPORTED_DEGREES[-1])
    with pytest.raises(ValueError, match=re.escape(f"θ·d = 500 is beyond every Lebedev grid: "
                                                   f"the finest (degree 131, 5810 directions) "
                                                   f"resolves θ·d ≤ {largest:.4g}")):
        choose_degree(500.0)
    with pytest.raises(ValueError, match="non-negative"):
        choose_degree(-1.0)


# --- ERoPE and the messages --------------------------------------------------------------------

def test_erope_pair_kernel_is_translation_invariant():
    """q̃_im · k̃_jm = Σ_p cos(Δ) (q_a k_a + q_b k_b) + sin(Δ) (q_b k_a - q_a k_b) with
    Δ = θ_p u_m·r_ij, for every direction; unchanged (1e-12) when all positions shift by t."""
    n = 12
    positions = molecule(n, seed=1)
    q, k, _ = qkv(n, seed=2)
    u, _ = lebedev_grid(DEGREE)
    theta = frequencies_for(positions)

    def kernel(pos):
        return jnp.einsum("imc,jmc->ijm", erope(q, pos, u, theta), erope(k, pos, u, theta))

    k0 = kernel(positions)
    delta = np.einsum("ijx,mx,p->ijmp", positions[None] - positions[:, None], u, theta)
    qa, qb, ka, kb = q[:, 0::2], q[:, 1::2], k[:, 0::2], k[:, 1::2]
    c = (qa[:, None] * ka[None] + qb[:, None] * kb[None])[:, :, None]  # (N, N, 1, P)
    s = (qb[:, None] * ka[None] - qa[:, None] * kb[None])[:, :, None]
    np.testing.assert_allclose(k0, np.sum(np.cos(delta) * c + np.sin(delta) * s, -1),
                               rtol=0, atol=1e-12)
    shifted = kernel(positions + np.array([3.0, -2.0, 5.0]))
    np.testing.assert_allclose(shifted, k0, rtol=0, atol=1e-12)


@pytest.fixture(params=[(1, False), (2, False), (2, True)], ids=["single", "one-hot", "chunked"])
def n_structures(request, monkeypatch) -> int:
    """The three code paths of ``efa_messages``: one structure (matmuls), a few (one-hot
    matmuls) and many (chunked segment sums, forced here by a small element budget)."""
    count, chunked = request.param
    if chunked:
        monkeypatch.setattr(efa_module, "_CHUNK_ELEMENTS", 64)
    return count


def test_messages_equal_sinc_pair_sum_and_are_invariant(n_structures):
    """efa_messages = efa_messages_direct within quadrature_bound (every θ_p d_ij ≤ 0.9 ×
    the resolvable phase, TOL = 1e-3); the same for the rotated molecule (within twice the
    bound: each side is within it of the invariant pair sum); permutation: exact (1e-12)."""
    n = 12
    positions = molecule(n, seed=3)
    q, k, v = qkv(n, seed=4)
    structure, mask = single(n)
    u, w = lebedev_grid(DEGREE)
    theta = frequencies_for(positions)

    def messages(q, k, v, pos, structure=structure, mask=mask):
        return np.asarray(efa_messages(q, k, v, pos, structure, n_structures, mask, u, w, theta))

    y = messages(q, k, v, positions)
    direct = np.asarray(efa_messages_direct(q, k, v, positions, structure, mask, theta))
    bound = quadrature_bound(q, k, v, structure, mask)
    assert np.all(np.abs(y - direct) <= bound)
    assert bound.max() < 0.02 * np.abs(y).max()  # a bound that says something

    rotation = random_rotation(seed=5)
    y_rot = messages(q, k, v, positions @ rotation.T + np.array([1.0, 2.0, -3.0]))
    assert np.all(np.abs(y_rot - y) <= 2 * bound)

    perm = np.random.default_rng(6).permutation(n)
    y_perm = messages(q[perm], k[perm], v[perm], positions[perm])
    np.testing.assert_allclose(y_perm, y[perm], rtol=0, atol=1e-12 * np.abs(y).max())


def test_padded_batch_equals_separate_structures():
    """Two molecules (5 and 7 atoms, far apart, interleaved) and two padding atoms (one in a
    padding structure, one labelled as molecule A) in one batch: the messages of each molecule
    equal those of its own call (1e-12), padding atoms get exactly 0, and the gradient of the
    messages is finite and 0 for the padding atoms."""
    a, b = molecule(5, seed=7), molecule(7, seed=8) + np.array([40.0, 0.0, 0.0])
    qa, ka, va = qkv(5, seed=9)
    qb, kb, vb = qkv(7, seed=10)
    u, w = lebedev_grid(DEGREE)
    theta = frequencies_for(np.concatenate([a, b - np.array([40.0, 0.0, 0.0])]))

    def alone(q, k, v, pos):
        s, m = single(len(pos))
        return np.asarray(efa_messages(q, k, v, pos, s, 1, m, u, w, theta))

    pad = lambda x: np.full((2,) + x.shape[1:], 7.0)  # noqa: E731
    positions = np.concatenate([a, b, np.array([[1e3, -1e3, 5.0], [0.0, 0.0, 0.0]])])
    q, k, v = (np.concatenate([x, y, pad(x)]) for x, y in [(qa, qb), (ka, kb), (va, vb)])
    structure = np.array([0] * 5 + [1] * 7 + [2, 0], np.int32)
    mask = np.array([True] * 12 + [False, False])
    order = np.random.default_rng(11).permutation(14)  # structures not contiguous
    positions, q, k, v, structure, mask = (x[order] for x in (positions, q, k, v, structure, mask))

    def batch(positions):
        return efa_messages(q, k, v, positions, structure, 3, mask, u, w, theta)

    y = np.asarray(jax.jit(batch)(positions))
    inverse = np.argsort(order)[:12]  # batch rows of the 12 real atoms, in the original order
    expected = np.concatenate([alone(qa, ka, va, a), alone(qb, kb, vb, b)])
    np.testing.assert_allclose(y[inverse], expected, rtol=0, atol=1e-12 * np.abs(expected).max())
    assert np.all(y[~mask] == 0.0)
    grad = jax.grad(lambda p: jnp.sum(jnp.sin(batch(p))))(positions)
    assert np.all(np.isfinite(grad)) and np.all(grad[~mask] == 0.0)


def _array_shapes(jaxpr) -> list[tuple[int, ...]]:
    """Shapes of every intermediate of a (closed) jaxpr, nested jaxprs (scan, remat) included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    shapes = []
    for eqn in jaxpr.eqns:
        shapes += [tuple(getattr(v.aval, "shape", ())) for v in eqn.outvars]
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                    shapes += _array_shapes(sub)
    return shapes


def test_no_pair_arrays(n_structures):
    """Neither the messages nor their gradient form an array with two axes of N atoms."""
    n = 13
    positions = molecule(n, seed=12)
    q, k, v = qkv(n, seed=13)
    structure, mask = single(n)
    u, w = lebedev_grid(11)
    theta = linear_frequencies(P, 1.0)

    def total(q, k, v, positions):
        y = efa_messages(q, k, v, positions, structure, n_structures, mask, u, w, theta)
        return jnp.sum(y**2)

    for fn in (total, jax.grad(total, argnums=(0, 1, 2, 3))):
        shapes = _array_shapes(jax.make_jaxpr(fn)(q, k, v, positions))
        assert shapes and not [s for s in shapes if s.count(n) > 1]
    # ... while the direct pair sum does (the check can fail)
    shapes = _array_shapes(jax.make_jaxpr(efa_messages_direct)(q, k, v, positions, structure,
                                                               mask, theta))
    assert [s for s in shapes if s.count(n) > 1]


# --- the module --------------------------------------------------------------------------------

N_ATOMS, FEATURES = 12, 8


def module_setup(dtype=jnp.float64):
    positions = molecule(N_ATOMS, seed=14)
    theta_max = 0.9 * resolvable_phase(DEGREE) / max_distance(positions)
    model = EuclideanFastAttention(frequencies=P, max_frequency=theta_max, degree=DEGREE,
                                   dtype=dtype)
    x = np.random.default_rng(15).normal(size=(N_ATOMS, FEATURES))
    structure, mask = single(N_ATOMS)
    params = model.init(jax.random.PRNGKey(0), x, positions, structure, 1, mask)
    readout = np.random.default_rng(16).normal(size=FEATURES)

    @jax.jit
    def energy(params, positions):
        return jnp.sum(model.apply(params, x, positions, structure, 1, mask) @ readout)

    return model, params, positions, x, readout, energy


def test_module_forces_equal_finite_differences():
    """F = -∇E (E = Σ_i readout · update_i) = central differences (h = 1e-5 Å) in float64,
    for every coordinate, to 1e-8 relative to the largest force."""
    _, params, positions, _, _, energy = module_setup()
    forces = -np.asarray(jax.grad(energy, argnums=1)(params, positions))
    h = 1e-5
    fd = np.zeros_like(positions)
    for i in range(N_ATOMS):
        for c in range(3):
            step = np.zeros_like(positions)
            step[i, c] = h
            e_plus, e_minus = energy(params, positions + step), energy(params, positions - step)
            fd[i, c] = -(e_plus - e_minus) / (2 * h)
    assert np.abs(forces).max() > 1e-2
    np.testing.assert_allclose(forces, fd, rtol=0, atol=1e-8 * np.abs(forces).max())


def test_module_energy_is_rotation_invariant_within_the_quadrature_bound():
    """|E(rotated and shifted) - E| ≤ Σ_i Σ_f |(W_out readout)_f| 2 bound_if, the message bound
    propagated through the output projection (a worst case: about 10 % of |E| here, while the
    deviations are about 6e-6 |E|; they are not 0, the grid is not exactly invariant)."""
    _, params, positions, x, readout, energy = module_setup()
    p = params["params"]
    # the module's input LayerNorm (flax's: epsilon 1e-6), then its projections
    xn = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6)
    xn = xn * np.asarray(p["norm"]["scale"]) + np.asarray(p["norm"]["bias"])
    dense = lambda name: xn @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
    q, k, v = (np.asarray(dense(name)) for name in ("query", "key", "value"))
    structure, mask = single(N_ATOMS)
    # the messages are averaged over the atoms and scaled by 1/sqrt(2P), their bound too
    bound = quadrature_bound(q, k, v, structure, mask) / (N_ATOMS * np.sqrt(2 * P))
    limit = 2 * np.sum(bound @ np.abs(np.asarray(p["output"]["kernel"]) @ readout))
    e0 = float(energy(params, positions))
    for seed in (17, 18):
        moved = positions @ random_rotation(seed).T + np.array([0.5, -1.5, 2.0])
        assert 1e-12 * abs(e0) < abs(float(energy(params, moved)) - e0) <= limit
    assert limit < 0.1 * abs(e0)  # a bound that says something


def test_module_float32_matches_float64():
    """The float32 module (same parameters) matches float64 to 1e-5 of the largest update;
    padding atoms get 0 and several structures work under jit."""
    model64, params, positions, x, _, _ = module_setup()
    model32 = model64.clone(dtype=jnp.float32)
    params32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    structure, mask = single(N_ATOMS)
    y64 = np.asarray(model64.apply(params, x, positions, structure, 1, mask))
    y32 = model32.apply(params32, x.astype(np.float32), positions.astype(np.float32), structure,
                        1, mask)
    assert y32.dtype == jnp.float32
    np.testing.assert_allclose(y32, y64, rtol=0, atol=1e-5 * np.abs(y64).max())

    # the same molecule as structure 0 of a batch with a padding atom in structure 1
    apply = jax.jit(lambda p, x, r, s, m: model32.apply(p, x, r, s, 2, m))
    xb = np.concatenate([x, np.ones((1, FEATURES))]).astype(np.float32)
    rb = np.concatenate([positions, np.full((1, 3), 9.0)]).astype(np.float32)
    yb = apply(params32, xb, rb, np.array([0] * N_ATOMS + [1], np.int32),
               np.array([True] * N_ATOMS + [False]))
    assert np.all(yb[-1] == 0.0)
    np.testing.assert_allclose(yb[:-1], y64, rtol=0, atol=1e-5 * np.abs(y64).max())


def test_module_parameters():
    model, params, *_ = module_setup()
    shapes = jax.tree.map(np.shape, params["params"])
    assert shapes == {"query": {"kernel": (FEATURES, 2 * P), "bias": (2 * P,)},
                      "key": {"kernel": (FEATURES, 2 * P), "bias": (2 * P,)},
                      "value": {"kernel": (FEATURES, FEATURES), "bias": (FEATURES,)},
                      "output": {"kernel": (FEATURES, FEATURES), "bias": (FEATURES,)},
                      "norm": {"scale": (FEATURES,), "bias": (FEATURES,)}}
    assert isinstance(model, nn.Module)
    np.testing.assert_allclose(linear_frequencies(4, 2.0), [0.5, 1.0, 1.5, 2.0])
