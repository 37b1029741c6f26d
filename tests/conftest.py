"""Shared fixtures: reference-data paths (skipped when ../shared is absent) and tiny models."""

from __future__ import annotations

import os
from pathlib import Path

# GPUs sum scattered values (forces, segment sums) with atomics in a varying order: results
# differ in the last bits from call to call. Tests of bitwise reproducibility (reload in a new
# process, kill-and-resume) need XLA's deterministic mode; CPUs are deterministic anyway. Set
# before JAX starts its backends; subprocesses inherit it.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_gpu_deterministic_ops=true".strip()
# `make test` runs two pytest workers (pytest-xdist); on a GPU each would otherwise reserve 75 %
# of its memory at start.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# One compilation cache for the whole run (both pytest workers, every CLI subprocess): the
# tests compile the same small models again and again. Inside the repository so that a clean
# clone starts empty; ``SO3KRATES_COMPILATION_CACHE=off make test`` compiles everything.
os.environ.setdefault("SO3KRATES_COMPILATION_CACHE",
                      str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax-compilation-cache"))

import jax
import numpy as np
import pytest

import so3krates  # noqa: F401  (enables float64)
from so3krates.batching import single_graph
from so3krates.compile import use_compilation_cache
from so3krates.config import ModelConfig
from so3krates.model import inference_params
from so3krates.model_io import build_module, init_params
from so3krates.potential import make_predict_fn

use_compilation_cache()

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``; tests using it skip with a clear message when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (needs ../shared beside the repo)")
    return SHARED_DATA


def small_config(dtype: str = "float64", **kw) -> ModelConfig:
    base = dict(features=32, num_layers=2, num_heads=4, degrees=[1, 2, 3, 4], cutoff=4.0,
                num_radial=16, dtype=dtype)
    base.update(kw)
    return ModelConfig(**base)


def init_model(config: ModelConfig, graph, seed: int = 0):
    """A randomly initialised module and its parameters, with non-trivial per-element scales."""
    module = build_module(config, energy_scale=1.0)
    params = init_params(module, graph, seed)
    # Spread the element scales/shifts so that a bug mixing elements cannot hide.
    key = jax.random.PRNGKey(seed + 1)
    params = dict(params)
    params["element_scale"] = params["element_scale"] + jax.random.normal(key, params["element_scale"].shape, params["element_scale"].dtype)
    params["element_shift"] = 0.1 * jax.random.normal(key, params["element_shift"].shape, params["element_shift"].dtype)
    # A random last kernel whatever ``output_init`` says: with zeros the energy would not depend
    # on the positions, and symmetry and gradient tests would compare zeros.
    head = dict(params["Dense_1"])
    fan_in = head["kernel"].shape[0]
    head["kernel"] = jax.random.normal(jax.random.PRNGKey(seed + 2), head["kernel"].shape,
                                       head["kernel"].dtype) / float(np.sqrt(fan_in))
    params["Dense_1"] = head
    return module, params


def ethanol_frames(n: int = 3):
    from so3krates.data import read_dataset
    from so3krates.datasets import shipped_dataset_path

    return read_dataset(shipped_dataset_path()).subset(np.arange(n))


def cell_and_molecule(cutoff: float):
    """A small triclinic cell (4 atoms: several images of one pair) and an ethanol molecule:
    ``(numbers, positions, cells (2, 3, 3), pbcs, neighbour lists)``."""
    from so3krates.neighbours import neighbour_list

    data = ethanol_frames(1)
    rng = np.random.default_rng(5)
    cell = np.array([[3.2, 0.0, 0.0], [0.8, 3.0, 0.0], [0.3, 0.5, 3.4]])
    numbers = [np.array([6, 8, 1, 1]), data.numbers[0]]
    positions = [rng.uniform(size=(4, 3)) @ cell, data.positions[0]]
    cells = np.stack([cell, np.zeros((3, 3))])
    pbcs = [np.ones(3, bool), np.zeros(3, bool)]
    nls = [neighbour_list(r, c, p, cutoff) for r, c, p in zip(positions, cells, pbcs)]
    return numbers, positions, cells, pbcs, nls


def predict_single(predict, params, numbers, positions, cell, pbc, cutoff, dtype):
    graph, _ = single_graph(numbers, positions, cell, pbc, cutoff, dtype=dtype)
    out = predict(params, graph)
    n = len(numbers)
    return float(out.energy[0]), np.asarray(out.forces[:n], dtype=np.float64)


@pytest.fixture
def tiny_predict():
    """``(predict, params, dtype)`` factory for a tiny random model."""

    def make(dtype: str = "float64", seed: int = 0, radial_knots: int = 0,
             pair_halves: bool = False, fused_kernels: bool = True, **kw):
        """``radial_knots`` > 0: the same network with spline-tabulated radial filters (and,
        with ``fused_kernels``, the CPU kernels where available); ``pair_halves``: for graphs
        in the halves layout (see ``so3krates.batching.pack``)."""
        cfg = small_config(dtype, **kw)
        data = ethanol_frames(1)
        graph, _ = single_graph(data.numbers[0], data.positions[0], data.cells[0], data.pbc[0],
                                cfg.cutoff, dtype=np.dtype(dtype))
        module, params = init_model(cfg, graph, seed)
        if radial_knots:
            module = build_module(cfg, energy_scale=1.0, radial_knots=radial_knots)
            module = module.clone(fused_kernels=fused_kernels)
            params = inference_params(module, params)
        return jax.jit(make_predict_fn(module, np.zeros(119), pair_halves)), params, cfg

    return make


TINY_TRAIN = [
    "data.n_train=60", "data.n_valid=20", "data.n_test=40",
    "model.features=16", "model.num_layers=1", "model.num_radial=8", "model.degrees=[1,2]",
    "training.batch_size=4", "training.max_steps=600", "training.valid_every=150",
    "training.decay_steps=100000",  # ~constant rate: the MD tests need a well-trained PES
    "training.progress=false",
]


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory) -> Path:
    """A tiny model trained briefly on the shipped dataset (shared by several tests)."""
    from so3krates.config import load_config
    from so3krates.datasets import shipped_dataset_path
    from so3krates.training.trainer import train

    out = tmp_path_factory.mktemp("model")
    cfg = load_config(None, [f"data.path={shipped_dataset_path()}", *TINY_TRAIN])
    train(cfg, out)
    return out


# A tiny model for periodic data (1,200 steps): the Cu fixture and the mixed-data test.
TINY_PERIODIC_TRAIN = [
    "model.features=16", "model.num_layers=1", "model.num_radial=8", "model.degrees=[1,2]",
    "model.cutoff=4.0", "training.batch_size=4", "training.max_steps=1200",
    "training.valid_every=400", "training.learning_rate=3e-3", "training.progress=false",
]


@pytest.fixture(scope="session")
def trained_cu_model_dir(tmp_path_factory) -> Path:
    """A tiny model trained briefly on the shipped periodic Cu set (cells of up to 32 atoms,
    with stress): for the materials commands (cell relaxation, EOS, NPT, heat flux)."""
    import ase.io

    from so3krates.config import load_config
    from so3krates.datasets import shipped_dataset_path
    from so3krates.training.trainer import train

    out = tmp_path_factory.mktemp("cu_model")
    frames = [a for a in ase.io.read(shipped_dataset_path("cu_emt"), ":") if len(a) <= 32]
    data = out / "cu.extxyz"
    ase.io.write(data, frames, format="extxyz")
    cfg = load_config(None, [f"data.path={data}", f"data.n_train={len(frames) - 40}",
                             "data.n_valid=20", "data.n_test=20", *TINY_PERIODIC_TRAIN])
    train(cfg, out / "model")
    return out / "model"
