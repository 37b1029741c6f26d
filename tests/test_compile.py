"""``so3krates.compile.jit``: jax.jit with the package's compile options, same results."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from conftest import ethanol_frames, init_model, small_config
from so3krates.batching import single_graph
from so3krates.compile import CPU_COMPILER_OPTIONS, compiler_options, jit
from so3krates.neighbours import pairs as model_pairs
from so3krates.potential import make_predict_fn


def test_jit_is_a_lazy_jax_jit_with_static_arguments():
    calls = []

    @jit(static_argnames=("power",))
    def f(x, power):
        calls.append(power)  # runs at tracing only
        return x**power

    assert float(f(jnp.asarray(3.0), power=2)) == 9.0
    assert float(f(jnp.asarray(4.0), power=2)) == 16.0
    assert float(f(jnp.asarray(2.0), power=3)) == 8.0
    assert calls == [2, 3]
    assert f._cache_size() == 2  # attributes of the jax.jit object are forwarded
    assert "power" not in f.lower(jnp.asarray(1.0), power=2).as_text()


def ethanol_grid_model():
    """30 ethanol molecules 6.5 Å from copy to copy (~2,000 pairs), a float64 model and its
    prediction function."""
    data = ethanol_frames(1)
    pos = np.concatenate([data.positions[0] + [6.5 * (k % 5), 6.5 * (k // 5), 0.0] for k in range(30)])
    numbers = np.tile(data.numbers[0], 30)
    cfg = small_config("float64")
    graph, _ = single_graph(numbers, pos, np.zeros((3, 3)), np.zeros(3, bool), cfg.cutoff,
                            dtype=np.float64)
    module, params = init_model(cfg, graph, 0)
    return graph, params, make_predict_fn(module, np.zeros(119))


def set_pair_chunk(monkeypatch, pairs: int) -> None:
    monkeypatch.setitem(model_pairs.PAIR_CHUNK, jax.default_backend(), pairs)


def test_compile_options_change_no_result_of_the_chunked_pair_loop(monkeypatch):
    if jax.default_backend() == "cpu":
        assert compiler_options() == CPU_COMPILER_OPTIONS  # known to this jaxlib: applied
    graph, params, predict = ethanol_grid_model()
    set_pair_chunk(monkeypatch, 1024)  # the CPU's: the scanned pair loop runs
    assert graph.centers.shape[0] > model_pairs.pair_chunk()
    ours, plain = jit(predict)(params, graph), jax.jit(predict)(params, graph)
    np.testing.assert_allclose(ours.energy, plain.energy, rtol=1e-12)
    f_ref = np.asarray(plain.forces)
    assert np.abs(np.asarray(ours.forces) - f_ref).max() <= 1e-10 * np.abs(f_ref).max()


def test_chunked_pair_loop_equals_one_piece(monkeypatch):
    """Chunks of pairs (scanned, rematerialised) give the one-piece energy and forces."""
    graph, params, predict = ethanol_grid_model()
    n_pairs = graph.centers.shape[0]
    results = []
    for chunk in (n_pairs, 1024, 300):  # one piece; 2 chunks; 7 chunks
        set_pair_chunk(monkeypatch, chunk)
        results.append(jax.jit(predict)(params, graph))  # a fresh jit traces anew
    one = results[0]
    for out in results[1:]:
        np.testing.assert_allclose(out.energy, one.energy, rtol=1e-12)
        f_ref = np.asarray(one.forces)
        assert np.abs(np.asarray(out.forces) - f_ref).max() <= 1e-10 * np.abs(f_ref).max()


def test_jit_works_inside_other_transformations():
    @jit
    def energy(x):
        return jnp.sum(jnp.sin(x) ** 2)

    x = jnp.linspace(0.0, 1.0, 5)
    expected = 2 * jnp.sin(x) * jnp.cos(x)
    np.testing.assert_allclose(jax.jit(jax.grad(energy))(x), expected, rtol=1e-12)
    np.testing.assert_allclose(jax.vmap(energy)(x[:, None]), jnp.sin(x) ** 2, rtol=1e-12)
    np.testing.assert_allclose(jax.jit(lambda y: energy(y) + 1.0)(x), energy(x) + 1.0, rtol=1e-12)


def test_one_cpu_thread_is_set_before_jax_starts_and_refused_after():
    """``use_one_cpu_thread`` puts XLA's single-thread flags into XLA_FLAGS and pins the
    process to the given core before the backend starts; an unavailable core is refused, and
    once JAX has computed the call raises instead of silently doing nothing."""
    import os
    import subprocess
    import sys

    core = min(os.sched_getaffinity(0))
    code = (
        "import os, jax, jax.numpy as jnp\n"
        "from so3krates.compile import SINGLE_THREAD_XLA_FLAGS, use_one_cpu_thread\n"
        "try:\n    use_one_cpu_thread(core=10**6)\nexcept ValueError:\n    print('no such core')\n"
        f"use_one_cpu_thread(core={core}); use_one_cpu_thread()\n"
        f"assert os.sched_getaffinity(0) == {{{core}}}\n"
        "assert os.environ['XLA_FLAGS'].count(SINGLE_THREAD_XLA_FLAGS) == 1\n"
        "assert float(jnp.sum(jnp.arange(4.0))) == 6.0\n"
        "try:\n    use_one_cpu_thread()\nexcept RuntimeError:\n    print('refused')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["no", "such", "core", "refused"]


def test_compilation_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    from so3krates.compile import CACHE_ENV, default_cache_directory

    monkeypatch.setenv(CACHE_ENV, "off")
    assert default_cache_directory() is None
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert default_cache_directory() == tmp_path / "c"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("SO3KRATES_CACHE", str(tmp_path / "root"))
    assert default_cache_directory() == tmp_path / "root" / "jax"


def test_a_second_process_loads_the_compiled_program_from_the_cache(tmp_path):
    # the cache is real: the second process finds the first one's entry and compiles nothing
    import subprocess
    import sys

    code = ("import jax, jax.numpy as jnp\n"
            "from so3krates.compile import jit, use_compilation_cache\n"
            f"use_compilation_cache({str(tmp_path)!r})\n"
            "events = []\n"
            "jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))\n"
            "jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()\n"
            "print(sum(e.endswith('cache_hits') for e in events),"
            " sum(e.endswith('cache_misses') for e in events))\n")
    (hits0, misses0), (hits1, misses1) = [
        map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.split()[-2:]) for _ in range(2)]
    assert (hits0, misses1) == (0, 0) and hits1 == misses0 > 0
