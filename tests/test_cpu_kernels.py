"""The fused CPU kernels of the pair attention (``so3krates.model.cpu_kernels``): the same
messages and gradients as the pure-JAX reference, alone and inside a model, in any pair order
and in the halves layout, under ``vmap``; a failed build falls back with a warning."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import cell_and_molecule, ethanol_frames
from so3krates.batching import Capacity, pack, round_up
from so3krates.model import cpu_kernels
from so3krates.model.basis import degree_index
from so3krates.model.radial_table import evaluate_table
from so3krates.model.so3krates import pair_messages
from so3krates.model_io import build_module
from so3krates.potential import make_predict_fn
from so3krates.neighbours import neighbour_list, reverse_halves


@pytest.fixture(autouse=True)
def kernels():
    if jax.default_backend() != "cpu":
        pytest.skip("the fused kernels are for the CPU backend")
    if not cpu_kernels.available():
        pytest.skip("fused CPU kernels unavailable (no C++ compiler or failed build, see warning)")


def random_pairs(rng, dt, halves: bool, rows: int, n=9, f=16, p=160, knots=13):
    """Inputs of one block's pair attention; in the halves layout pair p/2 + k reverses pair k
    (same distance and cutoff weight, centre and neighbour swapped). From 64 couples on, the
    kernel splits the pairs between two threads."""
    d = len(degree_index((1, 2, 3, 4)))
    s = rng.uniform(0, knots, p)
    s[:3] = [0.0, knots, knots - 1e-9]  # the table's ends
    cut = rng.uniform(0, 1, p) * (rng.uniform(size=p) > 0.2)  # some pairs beyond the cutoff
    centers, neighbours = rng.integers(0, n, p), rng.integers(0, n, p)
    if halves:
        h = p // 2
        s[h:], cut[h:] = s[:h], cut[:h]
        centers[h:], neighbours[h:] = neighbours[:h], centers[:h]
    arrays = dict(qkv=rng.normal(size=(n, 5 * f)), ev=rng.normal(size=(rows, 2, f)), s=s,
                  cut=cut, ylm=rng.normal(size=(p, d)))
    fixed = dict(table=jnp.asarray(rng.normal(size=(knots, 4, 2, f)), dt),
                 centers=jnp.asarray(centers, jnp.int32), neighbours=jnp.asarray(neighbours, jnp.int32))
    return {k: jnp.asarray(v, dt) for k, v in arrays.items()}, fixed


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("halves,rows", [(False, 160), (False, 80), (False, 1), (True, 80),
                                         (True, 1)])
def test_kernel_matches_the_jax_reference(dtype, tol, halves, rows):
    """Messages and their gradients in qkv, the EV filters, the spline coordinates, cutoff
    weights and harmonics: relative error <= 1e-12 in float64; filter rows per pair, shared
    by all pairs, or by several (rows = 80 of 160 pairs: shared across the two threads).
    Pairs with a zero cutoff weight are absent: zero gradients, in their weight too (the
    reference's is not zero there, but no cutoff function has a slope where it is zero)."""
    dt = np.dtype(dtype)
    deg = degree_index((1, 2, 3, 4))
    heads, scales = (4, 4), (0.5, 0.25)
    x, fixed = random_pairs(np.random.default_rng(rows + 7 * halves), dt, halves, rows)
    n, f5 = x["qkv"].shape
    f, p = f5 // 5, x["cut"].shape[0]

    def reference(qkv, ev, s, cut, ylm):
        if halves:  # the kernel gives the gradient in s to the couple's first pair
            s = jnp.concatenate([s[: p // 2]] * 2)
        w = evaluate_table(fixed["table"], s) + jnp.concatenate([ev] * (p // rows))
        q, k = [qkv[:, :f], qkv[:, 3 * f : 4 * f]], [qkv[:, f : 2 * f], qkv[:, 4 * f :]]
        return pair_messages(q, k, qkv[:, 2 * f : 3 * f], [w[:, 0], w[:, 1]], cut, ylm,
                             fixed["centers"], fixed["neighbours"], n, deg, heads,
                             [np.asarray(a, dt) for a in scales])

    def kernel(qkv, ev, s, cut, ylm):
        return cpu_kernels.pair_attention(qkv, ev, fixed["table"], s, cut, ylm,
                                          fixed["centers"], fixed["neighbours"], deg, heads,
                                          scales, halves=halves)

    args = tuple(x.values())
    ref, out = reference(*args), kernel(*args)
    assert out.dtype == dt
    np.testing.assert_allclose(out, ref, rtol=0, atol=tol * np.abs(ref).max())
    g = jnp.asarray(np.random.default_rng(1).normal(size=ref.shape), dt)
    absent = np.asarray(x["cut"]) == 0
    assert 0 < absent.sum() < p
    for name, a, b in zip(x, jax.vjp(reference, *args)[1](g), jax.vjp(kernel, *args)[1](g)):
        assert np.abs(a).max() > 0, name
        if name == "cut":
            assert np.all(np.asarray(b)[absent] == 0)
            a, b = np.asarray(a)[~absent], np.asarray(b)[~absent]
        np.testing.assert_allclose(b, a, rtol=0, atol=tol * np.abs(a).max(), err_msg=name)


@pytest.mark.parametrize("halves,rows", [(False, 160), (True, 1)])
def test_kernel_without_qkv_gradient(halves, rows):
    """With q, k and v held fixed (``qkv_grad=False``) the same messages and the same gradients
    in everything else (to rounding: float64), and a zero one in qkv."""
    x, fixed = random_pairs(np.random.default_rng(5), np.float64, halves, rows)
    deg = degree_index((1, 2, 3, 4))

    def kernel(qkv_grad):
        return lambda *a: cpu_kernels.pair_attention(
            a[0], a[1], fixed["table"], *a[2:], fixed["centers"], fixed["neighbours"], deg,
            (4, 4), (0.5, 0.25), halves=halves, qkv_grad=qkv_grad)

    args = tuple(x.values())
    (out, vjp), (out_fixed, vjp_fixed) = (jax.vjp(kernel(q), *args) for q in (True, False))
    np.testing.assert_array_equal(out_fixed, out)
    g = jnp.asarray(np.random.default_rng(2).normal(size=out.shape))
    for name, a, b in zip(x, vjp(g), vjp_fixed(g)):
        if name == "qkv":
            assert np.abs(a).max() > 0 and np.all(np.asarray(b) == 0)
        else:
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-13 * np.abs(a).max(), err_msg=name)


def test_kernel_rejects_rows_that_do_not_divide_the_pairs():
    x, fixed = random_pairs(np.random.default_rng(0), np.float64, True, 3)
    with pytest.raises(ValueError, match="filter rows"):
        cpu_kernels.pair_attention(x["qkv"], x["ev"], fixed["table"], x["s"], x["cut"], x["ylm"],
                                   fixed["centers"], fixed["neighbours"],
                                   degree_index((1, 2, 3, 4)), (4, 4), (1.0, 1.0), halves=True)


def mixed_batch(cutoff: float):
    """A small triclinic cell and a molecule with padding, as (sorted graph, halves graph)."""
    numbers, positions, cells, _, nls = cell_and_molecule(cutoff)
    cap = Capacity(atoms=24, pairs=round_up(sum(len(n.centers) for n in nls) + 10, 64),
                   structures=3)
    assert cap.pairs <= 1024  # one chunk: the fused path
    return (pack(numbers, positions, cells, nls, cap, dtype=np.float64),
            pack(numbers, positions, cells, nls, cap, dtype=np.float64,
                 halves=[reverse_halves(nl) for nl in nls]))


def test_fused_model_matches_the_jax_path(tiny_predict):
    """A tabulated float64 model gives the same energies and forces with and without the
    kernels (relative 1e-12), in the sorted layout and in the halves layout (told so or not),
    and compiles the kernels in."""
    plain, params, cfg = tiny_predict("float64", radial_knots=64, fused_kernels=False)
    sorted_graph, halves_graph = mixed_batch(cfg.cutoff)
    ref = plain(params, sorted_graph)
    scale = np.abs(np.asarray(ref.forces)).max()
    module = build_module(cfg, energy_scale=1.0, radial_knots=64)
    for pair_halves, graphs in [(False, (sorted_graph, halves_graph)), (True, (halves_graph,))]:
        fused = jax.jit(make_predict_fn(module, np.zeros(119), pair_halves))
        assert "so3krates_pair_attention" in fused.lower(params, graphs[0]).as_text()
        for graph in graphs:
            out = fused(params, graph)
            np.testing.assert_allclose(out.energy, ref.energy, rtol=1e-12)
            np.testing.assert_allclose(out.forces, ref.forces, rtol=0, atol=1e-12 * scale)


def test_fused_model_under_vmap(tiny_predict):
    """``vmap`` (as the batched relaxation uses it) gives each structure's own result."""
    predict, params, cfg = tiny_predict("float64", radial_knots=64)
    data = ethanol_frames(2)
    nls = [neighbour_list(r, np.zeros((3, 3)), np.zeros(3, bool), cfg.cutoff)
           for r in data.positions]
    cap = Capacity(atoms=16, pairs=max(len(n.centers) for n in nls) + 16, structures=2)
    graphs = [pack([z], [r], np.zeros((1, 3, 3)), [nl], cap, dtype=np.float64)
              for z, r, nl in zip(data.numbers, data.positions, nls)]
    batched = jax.vmap(predict, in_axes=(None, 0))(params, jax.tree.map(
        lambda *a: jnp.stack(a), *graphs))
    for i, g in enumerate(graphs):
        np.testing.assert_allclose(batched.forces[i], predict(params, g).forces, rtol=0,
                                   atol=1e-13)


def test_failed_build_falls_back_with_a_warning(tmp_path):
    """No usable compiler: a warning, and models run the pure-JAX path."""
    code = ("import warnings, jax; from so3krates.model import cpu_kernels\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    print(cpu_kernels.enabled(), any('pure-JAX' in str(x.message) for x in w))\n")
    env = dict(os.environ, CXX=sys.executable + "-not-a-compiler", SO3KRATES_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr
    env = dict(os.environ, CXX="false", SO3KRATES_CACHE=str(tmp_path))  # a compiler that fails
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr
