"""Inference parameters: spline-tabulated radial filters (exact on cubics, close to the
network) and stored transposed kernels (same values and gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from conftest import ethanol_frames
from so3krates.batching import Capacity, pack
from so3krates.model.radial_table import R_MIN, evaluate_table, hermite_table, spline_coordinate
from so3krates.model.layers import matmul_with_transpose
from so3krates.model_io import default_radial_knots, load_model
from so3krates.neighbours import neighbour_list


def test_hermite_table_reproduces_cubics_and_their_slopes():
    coeffs = np.random.default_rng(0).normal(size=(4, 3, 5))

    def curve(d):
        return sum(c * d[:, None, None] ** k for k, c in enumerate(coeffs))

    cutoff, knots = 4.0, 37
    table = hermite_table(curve, cutoff, knots)
    d = jnp.asarray(np.random.default_rng(1).uniform(R_MIN, cutoff, 200))

    def spline(d):
        return evaluate_table(table, spline_coordinate(d, cutoff, knots))

    np.testing.assert_allclose(spline(d), curve(d), rtol=0, atol=1e-10)
    slope = jax.jvp(spline, (d,), (jnp.ones_like(d),))[1]
    exact_slope = jax.jvp(curve, (d,), (jnp.ones_like(d),))[1]
    np.testing.assert_allclose(slope, exact_slope, rtol=0, atol=1e-9)
    # Beyond the table the spline holds its end values (and the cutoff zeroes the pair anyway).
    np.testing.assert_allclose(spline(jnp.array([cutoff + 1.0])), curve(jnp.array([cutoff])),
                               atol=1e-10)


def test_spline_is_continuously_differentiable_across_knots():
    """Slope continuity is what keeps forces continuous and NVE energy conserved."""
    table = hermite_table(lambda d: jnp.sin(3 * d)[:, None] * jnp.exp(-d)[:, None], 5.0, 64)
    h = (5.0 - R_MIN) / 64
    knots = R_MIN + h * jnp.arange(1, 64)
    eps = 1e-9

    def spline(d):
        return evaluate_table(table, spline_coordinate(d, 5.0, 64))[:, 0]

    def slope(d):
        return jax.jvp(spline, (d,), (jnp.ones_like(d),))[1]

    np.testing.assert_allclose(spline(knots - eps), spline(knots + eps), atol=1e-7)
    np.testing.assert_allclose(slope(knots - eps), slope(knots + eps), atol=1e-7)


def test_tabulated_model_approaches_the_network(tiny_predict):
    """The interpolation error falls with the knot spacing as h^4 (energy) / h^3 (forces)."""
    exact, params, cfg = tiny_predict("float64")
    data = ethanol_frames(4)  # one padded batch: one compilation per model
    nls = [neighbour_list(r, c, np.zeros(3, bool), cfg.cutoff)
           for r, c in zip(data.positions, data.cells)]
    graph = pack(data.numbers, data.positions, data.cells, nls,
                 Capacity(atoms=40, pairs=320, structures=5), dtype=np.float64)
    out0 = exact(params, graph)
    assert np.abs(np.asarray(out0.forces)).max() > 0.1, "forces too small for a meaningful test"
    # Measured: 8.6e-9 eV, 1.7e-6 eV/Å at 256 intervals; 4.2e-11, 2.8e-8 at 1,024 (16 x finer).
    for knots, tol_e, tol_f in [(256, 5e-8, 1e-5), (1024, 3e-10, 2e-7)]:
        tab, tab_params, _ = tiny_predict("float64", radial_knots=knots)
        out1 = tab(tab_params, graph)
        assert np.abs(np.asarray(out1.energy - out0.energy)).max() <= tol_e, knots
        assert np.abs(np.asarray(out1.forces - out0.forces)).max() <= tol_f, knots


def test_loaded_models_tabulate_in_float32_only(trained_model_dir):
    """Default inference: float32 tabulated, float64 exact; the float32 difference is at the
    level of float32 rounding itself (compared with the float64 network)."""
    m32 = load_model(trained_model_dir, "float32")
    exact32 = load_model(trained_model_dir, "float32", radial_knots=0)
    m64 = load_model(trained_model_dir, "float64")
    assert m32.radial_knots == default_radial_knots("float32") > 0
    assert m64.radial_knots == default_radial_knots("float64") == 0
    assert "radial_table" in m32.inference_params["attention_0"]
    assert "radial_table" not in m32.params["attention_0"]  # what gets saved stays the network
    atoms = ethanol_frames(3)
    results = {}
    for name, model in [("tab32", m32), ("exact32", exact32), ("exact64", m64)]:
        calc = model.calculator()
        results[name] = []
        for z, r in zip(atoms.numbers, atoms.positions):
            from ase import Atoms

            a = Atoms(numbers=z, positions=r)
            a.calc = calc
            results[name].append((a.get_potential_energy(), a.get_forces()))
    for (e_t, f_t), (e_x, f_x), (e_64, f_64) in zip(*results.values()):
        f32_noise = np.abs(f_x - f_64).max()
        assert abs(e_t - e_64) < 1e-4
        assert np.abs(f_t - f_64).max() <= max(3 * f32_noise, 1e-5)


def test_matmul_with_transpose_has_the_plain_gradients():
    rng = np.random.default_rng(0)
    x, w = jnp.asarray(rng.normal(size=(7, 5))), jnp.asarray(rng.normal(size=(5, 3)))

    def loss(f):
        return lambda x, w: jnp.sum(jnp.sin(f(x, w)) ** 2)

    plain = loss(lambda x, w: x @ w)
    stored = loss(lambda x, w: matmul_with_transpose(x, w, w.T))
    np.testing.assert_allclose(stored(x, w), plain(x, w), rtol=1e-15)
    for a, b in zip(jax.grad(stored, (0, 1))(x, w), jax.grad(plain, (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-13)
