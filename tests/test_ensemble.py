"""Committee ensembles (so3krates.ensemble): every member in one vmapped call, their mean and
spread, the directory format, the calculator and evaluation (tiny untrained models,
perturbed so that members differ; each compiled function is shared between tests)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.build import molecule

from conftest import ethanol_frames, small_config
from so3krates.batching import single_graph
from so3krates.calculator import EnsembleCalculator, So3kratesCalculator
from so3krates.ensemble import (
    ENSEMBLE_FILE,
    Ensemble,
    EnsembleFileError,
    is_ensemble,
    load_ensemble,
    write_ensemble,
)
from so3krates.model_io import Model, build_module, init_params, save_model

REFS = {1: -13.6, 6: -1030.0, 8: -2040.0}
CONFIG = dict(features=16, num_layers=1, degrees=[1, 2], num_radial=8)


def perturbed(params, seed: int, scale: float = 0.02):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return tree.unflatten([x + scale * jax.random.normal(k, x.shape, x.dtype)
                           for x, k in zip(leaves, keys)])


def ethanol() -> Atoms:
    a = molecule("CH3CH2OH")
    a.rattle(0.05, seed=3)
    return a


def crystal() -> Atoms:
    """A small triclinic cell (several images of each pair within the cutoff)."""
    cell = np.array([[3.2, 0.0, 0.0], [0.8, 3.0, 0.0], [0.3, 0.5, 3.4]])
    frac = np.random.default_rng(5).uniform(size=(4, 3))
    return Atoms([6, 8, 1, 1], scaled_positions=frac, cell=cell, pbc=True)


def ethanol_graph(cfg):
    a = ethanol()
    return single_graph(a.numbers, a.positions, np.zeros((3, 3)), np.zeros(3, bool), cfg.cutoff,
                        dtype=np.float64)[0]


@pytest.fixture(scope="module")
def base():
    cfg = small_config(**CONFIG)
    return cfg, init_params(build_module(cfg), ethanol_graph(cfg), 0)


@pytest.fixture(scope="module")
def members(base):
    cfg, params = base
    return [Model(f"m{s}", cfg, perturbed(params, s), REFS, 1.0, "float64") for s in (1, 2, 3)]


@pytest.fixture(scope="module")
def ens(members):
    return Ensemble(members)


@pytest.fixture(scope="module")
def crystal_graph(ens):
    return ens.graph(crystal(), pair_halves=True)[0]


def one_by_one(members, graph, stress=True):
    """Each member's prediction through the first member's compiled function (one compiled
    function for all; the same architecture)."""
    fn = members[0].predict_function(pair_halves=True, stress=stress)
    return [fn(m.inference_params, graph) for m in members]


def test_identical_members_have_zero_spread_and_the_model_s_prediction(members, crystal_graph):
    m = members[0]
    pred = Ensemble([m, m, m], batching="vmap").predict(crystal_graph, pair_halves=True,
                                                        stress=True)
    single = one_by_one([m], crystal_graph)[0]
    assert np.abs(np.asarray(pred.energy_uncertainty)).max() < 1e-12
    assert np.abs(np.asarray(pred.forces_uncertainty)).max() < 1e-12
    assert np.abs(np.asarray(pred.stress_uncertainty)).max() < 1e-12
    assert abs(float(pred.energy[0] - single.energy[0])) < 1e-10
    np.testing.assert_allclose(pred.forces, single.forces, rtol=0, atol=1e-10)
    np.testing.assert_allclose(pred.stress, single.stress, rtol=0, atol=1e-10)
    assert np.asarray(pred.member_energies).shape == (3, 2)


@pytest.mark.parametrize("batching", ["vmap", "map"])
def test_ensemble_in_one_call_equals_members_one_by_one(batching, ens, members, crystal_graph):
    if batching == ens.batching:
        ensemble = ens  # (compiled once, for the calculator test too)
    else:
        ensemble = Ensemble(members, batching=batching)
    assert ensemble.batching == batching
    pred = ensemble.predict(crystal_graph, pair_halves=True, stress=True)
    alone = one_by_one(members, crystal_graph)
    n = int(crystal_graph.atom_mask.sum())
    for k, ref in enumerate(alone):
        assert abs(float(pred.members.energy[k, 0] - ref.energy[0])) < 1e-10
        np.testing.assert_allclose(pred.members.forces[k], ref.forces, rtol=0, atol=1e-10)
        np.testing.assert_allclose(pred.members.stress[k], ref.stress, rtol=0, atol=1e-10)
    energies = np.array([float(r.energy[0]) for r in alone])
    forces = np.stack([np.asarray(r.forces)[:n] for r in alone])
    stress = np.stack([np.asarray(r.stress)[0] for r in alone])
    assert abs(float(pred.energy[0]) - energies.mean()) < 1e-10
    np.testing.assert_allclose(np.asarray(pred.forces)[:n], forces.mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(pred.stress)[0], stress.mean(0), rtol=0, atol=1e-10)
    # The definitions: std (ddof=0) of energies; per atom sqrt(mean_c var_c) of forces.
    assert abs(float(pred.energy_uncertainty[0]) - energies.std()) < 1e-10
    np.testing.assert_allclose(np.asarray(pred.forces_uncertainty)[:n],
                               np.sqrt(forces.var(axis=0).mean(axis=1)), rtol=0, atol=1e-10)
    assert float(pred.energy_uncertainty[0]) > 1e-4
    assert np.all(np.asarray(pred.forces_uncertainty)[:n] > 1e-6)
    assert np.all(np.asarray(pred.forces_uncertainty)[n:] == 0.0)


def test_members_with_other_reference_energies(members, crystal_graph):
    """A member with its own reference energies: its energy includes them (the difference to
    the first member's is added outside the network); forces and stress are unchanged."""
    shifted = {z: e + 0.1 * z for z, e in REFS.items()}
    other = Model("m9", members[1].config, members[1].params, shifted, 2.0, "float64")
    pred = Ensemble([members[0], other]).predict(crystal_graph, pair_halves=True, stress=True)
    alone = one_by_one([members[0], members[1]], crystal_graph)
    numbers = crystal().numbers
    assert abs(float(pred.members.energy[1, 0] - alone[1].energy[0])
               - sum(0.1 * z for z in numbers)) < 1e-9
    np.testing.assert_allclose(pred.members.forces[1], alone[1].forces, rtol=0, atol=1e-10)


def test_calculator_results_and_no_recompilation(ens):
    # Molecule: the device Verlet list, every member in the compiled call.
    atoms = ethanol()
    calc = So3kratesCalculator(ens)
    assert isinstance(calc, EnsembleCalculator)
    atoms.calc = calc
    for step in range(3):
        atoms.positions += np.random.default_rng(step).normal(size=(len(atoms), 3)) * 0.01
        atoms.get_forces()
        r = calc.results
        assert isinstance(r["energy_uncertainty"], float) and r["energy_uncertainty"] > 1e-4
        assert r["forces_uncertainty"].shape == (len(atoms),)
        assert r["member_energies"].shape == (3,)
        assert r["forces"].shape == (len(atoms), 3)
    assert calc.compiled_variants() == 1, "atoms moving must not recompile"
    assert abs(r["energy"] - r["member_energies"].mean()) < 1e-9
    assert abs(r["energy_uncertainty"] - r["member_energies"].std()) < 1e-9
    assert calc.get_property("energy_uncertainty", atoms) == r["energy_uncertainty"]

    # The same through the MD engine's shape: the mean's energy function, derived.
    import jax.numpy as jnp

    from so3krates.md.system import System
    from so3krates.neighbours import verlet
    from so3krates.potential import derive

    system = System.from_atoms(atoms)
    spec = verlet.allocate(atoms.positions, system.cell, system.pbc, ens.cutoff, 0.5)
    x, cell = jnp.asarray(atoms.positions), jnp.asarray(system.cell)
    nbrs = verlet.build(x, cell, spec)
    out = jax.jit(derive(ens.energy_fn(system)))(x, cell, nbrs)
    assert abs(float(out.energy) - r["energy"]) < 1e-9
    np.testing.assert_allclose(out.forces, r["forces"], rtol=0, atol=1e-10)

    # Periodic: host neighbour list, stress, the same capacity while atoms move.
    atoms = crystal()
    atoms.calc = ens.calculator()
    atoms.get_stress()
    compiled = atoms.calc.compiled_variants(stress=True)  # (shared with other tests' calls)
    for step in range(3):
        atoms.positions += np.random.default_rng(step).normal(size=(len(atoms), 3)) * 0.01
        stress = atoms.get_stress()
        r = atoms.calc.results
        assert stress.shape == (6,)
        assert r["forces_uncertainty"].shape == (4,) and r["member_energies"].shape == (3,)
        assert r["energy_uncertainty"] > 1e-4
    assert atoms.calc.compiled_variants(stress=True) == compiled, "atoms moving must not recompile"


def write_members(tmp_path, members) -> list:
    dirs = []
    for k, m in enumerate(members):
        d = tmp_path / f"model_{k}"
        save_model(d, m.config, m.params, m.reference_energies, m.energy_scale)
        dirs.append(d)
    return dirs


def test_directory_format_and_refusals(tmp_path, members):
    dirs = write_members(tmp_path, members)
    (dirs[0] / "checkpoints").mkdir()
    (dirs[0] / "checkpoints" / "latest.msgpack").write_bytes(b"training state")
    path = write_ensemble(tmp_path / "committee", dirs)
    assert not (tmp_path / "committee" / "members" / "0" / "checkpoints").exists()
    text = path.read_text()
    assert "!!python" not in text and "pickle" not in text
    meta = yaml.safe_load(text)
    assert meta["format"] == "so3krates-ensemble/1"
    assert [m["path"] for m in meta["members"]] == ["members/0", "members/1", "members/2"]
    assert is_ensemble(tmp_path / "committee") and not is_ensemble(dirs[0])
    loaded = load_ensemble(tmp_path / "committee")
    assert len(loaded) == 3 and loaded.dtype == "float64"
    for a, b in zip(jax.tree.leaves(loaded.params),
                    jax.tree.leaves(Ensemble(members).params)):
        np.testing.assert_array_equal(a, b)
    # Members already inside the directory stay there; others can be referenced in place.
    write_ensemble(tmp_path / "committee", [tmp_path / "committee" / "members" / "1",
                                            tmp_path / "committee" / "members" / "0"])
    assert [m["path"] for m in yaml.safe_load(path.read_text())["members"]] == [
        "members/1", "members/0"]
    write_ensemble(tmp_path / "refs", dirs[:2], copy=False)
    assert yaml.safe_load((tmp_path / "refs" / ENSEMBLE_FILE).read_text())["members"][0][
        "path"] == "../model_0"
    assert isinstance(So3kratesCalculator(tmp_path / "refs"), EnsembleCalculator)

    # Another architecture (parameters of its shapes, nothing compiled): refused, naming the
    # setting that differs.
    other_cfg = small_config(**{**CONFIG, "features": 8})
    module, graph = build_module(other_cfg), ethanol_graph(other_cfg)
    shapes = jax.eval_shape(lambda: init_params(module, graph, 0))
    save_model(tmp_path / "other", other_cfg, jax.tree.map(lambda x: np.zeros(x.shape), shapes),
               REFS, 1.0)
    with pytest.raises(ValueError, match=r"share the architecture.*model\.features: 16 vs 8"):
        write_ensemble(tmp_path / "bad", [dirs[0], tmp_path / "other"])
    assert not (tmp_path / "bad" / ENSEMBLE_FILE).exists()
    # Other elements, another cutoff: refused too.
    with pytest.raises(ValueError, match="same elements"):
        Ensemble([members[0], Model("x", members[0].config, members[0].params,
                                    {1: -13.6, 6: -1030.0}, 1.0, "float64")])
    wide = members[0].config.model_copy(update={"cutoff": 5.0})
    with pytest.raises(ValueError, match=r"model\.cutoff: 4\.0 vs 5\.0"):
        Ensemble([members[0], Model("x", wide, members[0].params, REFS, 1.0, "float64")])
    # A member replaced after the ensemble was written is named.
    m = members[2]
    save_model(tmp_path / "committee" / "members" / "0", m.config, m.params, REFS, 1.0)
    with pytest.raises(EnsembleFileError, match="member 1 .members/0. changed"):
        load_ensemble(tmp_path / "committee")
    with pytest.raises(EnsembleFileError, match="not an ensemble directory"):
        load_ensemble(dirs[0])


def test_evaluate_ensemble_directory(tmp_path, members):
    from so3krates.evaluate import evaluate_path

    write_ensemble(tmp_path / "committee", write_members(tmp_path, members))
    data = ethanol_frames(8)
    metrics, energy, forces, _ = evaluate_path(tmp_path / "committee", data, batch_size=8)
    for key in ("energy_mae", "forces_rmse", "n_structures"):  # the single-model keys
        assert key in metrics
    assert metrics["n_members"] == 3
    assert metrics["energy_uncertainty_mean"] > 0 and metrics["forces_uncertainty_mean"] > 0
    for key in ("energy_uncertainty_spearman", "forces_uncertainty_spearman"):
        assert -1.0 <= metrics[key] <= 1.0, (key, metrics[key])
    for key in ("energy_error_to_uncertainty", "forces_error_to_uncertainty"):
        assert metrics[key] > 0
    assert len(energy) == 8 and forces[0].shape == data.forces[0].shape
    json.dumps(metrics)


def test_float32_inference_path(members):
    """Float32 members with tabulated filters and, on the CPU, the fused pair-attention
    kernels (mapped over the members one after another inside the call): the members' own
    results to float32 rounding."""
    cfg = members[0].config.model_copy(update={"dtype": "float32"})
    ms = [Model(m.directory, cfg, jax.tree.map(lambda x: x.astype(np.float32), m.params), REFS,
                1.0, "float32") for m in members[:2]]
    assert ms[0].radial_knots > 0
    graph = ms[0].graph(ethanol(), pair_halves=True)[0]
    pred = Ensemble(ms).predict(graph, pair_halves=True)
    alone = [ms[0].predict_halves_fn(m.inference_params, graph) for m in ms]
    for k, ref in enumerate(alone):
        assert abs(float(pred.members.energy[k, 0] - ref.energy[0])) < 1e-4
        np.testing.assert_allclose(pred.members.forces[k], ref.forces, rtol=0, atol=1e-5)
    assert float(pred.energy_uncertainty[0]) > 1e-4
