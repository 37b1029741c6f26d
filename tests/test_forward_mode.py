"""Forward-mode derivatives (``jax.jvp``, Hessian-vector products) of an inference model's
predictions: its custom VJPs and fused kernels are reverse-mode only, so the tangents come
from the exact network (``so3krates.potential.with_exact_tangents``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from so3krates.batching import single_graph
from so3krates.model import inference_params
from so3krates.model.radial_table import DEFAULT_KNOTS

from test_stress import random_model, triclinic_small

jax.config.update("jax_enable_x64", True)


def _graph(model, atoms, halves=False):
    g, _ = single_graph(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc, model.cutoff,
                        dtype=np.dtype(model.dtype), pair_halves=halves)
    return g


@pytest.mark.parametrize("halves", [False, True])
def test_jvp_of_forces_equals_finite_differences(halves):
    """d F / d R along v of the inference path (spline tables, custom VJPs, fused kernels
    where available) in float64 = central differences of its own forces, and = the reverse-
    mode derivative of F·v (the Hessian is symmetric)."""
    model = random_model("float64", radial_knots=DEFAULT_KNOTS)
    assert model.radial_knots > 0
    atoms = triclinic_small()
    g = _graph(model, atoms, halves)
    v = jnp.asarray(np.random.default_rng(0).normal(size=g.positions.shape)) * g.atom_mask[:, None]

    def forces(r):
        return model.predict(g._replace(positions=r), pair_halves=halves).forces

    f0, df = jax.jvp(forces, (g.positions,), (v,))
    # the values are the inference path's (to the rounding of another compilation)
    np.testing.assert_allclose(f0, forces(g.positions), rtol=1e-12, atol=1e-14)
    h = 1e-4
    fd = (forces(g.positions + h * v) - forces(g.positions - h * v)) / (2 * h)
    assert float(jnp.abs(df).max()) > 0.1
    # The spline tables move the inference forces' slope from the exact one by ~1e-7.
    np.testing.assert_allclose(df, fd, atol=1e-5 * float(jnp.abs(df).max()))
    rev = jax.grad(lambda r: jnp.sum(forces(r) * v))(g.positions)
    np.testing.assert_allclose(rev, df, atol=1e-10 * float(jnp.abs(df).max()))


def test_jvp_of_stress_and_in_parameters():
    """The stress variant of ``predict_function(params, graph)`` in a direction of the network
    parameters: tangents of energy and stress equal central differences of the inference path
    (its derived parameters rebuilt at each shifted point)."""
    model = random_model("float64", radial_knots=DEFAULT_KNOTS)
    atoms = triclinic_small()
    g = _graph(model, atoms)
    fn = model.predict_function(stress=True)
    direction = jax.tree.map(lambda a: jnp.asarray(
        np.random.default_rng(a.size).normal(size=a.shape)), model.params)

    def energy_and_stress(p):
        out = fn(inference_params(model.module, p), g)
        return out.energy[0], out.stress[0]

    _, (de, ds) = jax.jvp(energy_and_stress, (model.params,), (direction,))
    h = 1e-5
    shift = lambda s: jax.tree.map(lambda a, d: a + s * d, model.params, direction)  # noqa: E731
    (ep, sp), (em, sm) = energy_and_stress(shift(h)), energy_and_stress(shift(-h))
    assert abs(float(de)) > 0.1 and float(jnp.abs(ds).max()) > 1e-3
    np.testing.assert_allclose(de, (ep - em) / (2 * h), rtol=1e-6)
    np.testing.assert_allclose(ds, (sp - sm) / (2 * h), atol=1e-6 * float(jnp.abs(ds).max()))


def test_hessian_vector_product_float32_matches_exact_network():
    """The float32 inference model's jvp of forces = the exact network's (same tangent
    function), and its values are the inference path's."""
    model = random_model("float32")
    assert model.radial_knots > 0
    atoms = triclinic_small()
    g = _graph(model, atoms)
    v = jnp.asarray(np.random.default_rng(1).normal(size=g.positions.shape), jnp.float32)
    v = v * g.atom_mask[:, None]
    exact = random_model("float32", radial_knots=0, params=model.params)
    fwd = lambda m: jax.jvp(  # noqa: E731
        lambda r: m.predict(g._replace(positions=r)).forces, (g.positions,), (v,))
    (f_fast, df_fast), (f_exact, df_exact) = fwd(model), fwd(exact)
    np.testing.assert_allclose(df_fast, df_exact, atol=1e-5 * float(jnp.abs(df_exact).max()))
    np.testing.assert_allclose(f_fast, f_exact, atol=1e-4)
