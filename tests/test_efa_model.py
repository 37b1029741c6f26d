"""SO3krates with Euclidean fast attention (``model.efa``): exact properties of the whole model
in float64 (forces = -grad E, translation and permutation invariance exact, rotation within
the quadrature error, padding and batching change nothing), the coupling beyond the cutoff
that EFA exists for, clear errors, and the calculator, MD engine and training paths."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from scipy.spatial.transform import Rotation

from conftest import small_config
from so3krates.batching import Capacity, pack, single_graph
from so3krates.config import EFAConfig
from so3krates.model_io import Model, build_module, init_params, load_model
from so3krates.neighbours import neighbour_list

from test_long_range import perturbed

REFS = {1: -13.6, 6: -1030.0, 8: -2040.0}


def make_model(efa: bool = True, dtype: str = "float64", seed: int = 0) -> Model:
    cfg = small_config(features=16, num_layers=2, degrees=[1, 2], num_radial=8,
                       efa=EFAConfig(enabled=efa, frequencies=4, max_frequency=0.6,
                                     max_extent=24.0))
    a = molecule("CH3CH2OH")
    g, _ = pack_one(cfg.cutoff, a)
    params = perturbed(init_params(build_module(cfg), g, seed), scale=0.1)
    return Model(".", cfg, params, REFS, 1.0, dtype)


def pack_one(cutoff, atoms):
    return single_graph(atoms.numbers, atoms.positions, np.zeros((3, 3)), np.zeros(3, bool),
                        cutoff, dtype=np.float64)


@pytest.fixture(scope="module")
def model() -> Model:
    return make_model()


def pair_of_molecules(distance: float = 12.0) -> Atoms:
    """Ethanol and water ``distance`` Å apart: beyond the 2-block receptive field (8 Å)."""
    a, b = molecule("CH3CH2OH"), molecule("H2O")
    a.rattle(0.05, seed=1)
    b.positions += [distance, 0.5, -0.3]
    return a + b


def energy_forces(model, atoms):
    pred = model.predict(model.graph(atoms)[0])
    return float(pred.energy[0]), np.asarray(pred.forces)[: len(atoms)]


def test_forces_are_minus_the_gradient(model):
    # Zero reference energies: a total of ~5000 eV would put float64 rounding (~1e-12 eV)
    # into the differences at the 1e-8 eV/Å level.
    model = Model(".", model.config, model.params, {1: 0.0, 6: 0.0, 8: 0.0}, 1.0, "float64")
    atoms = pair_of_molecules(9.0)
    _, forces = energy_forces(model, atoms)
    assert np.abs(forces).max() > 1e-2
    h = 1e-4
    fd = np.zeros_like(forces)
    for k in range(len(atoms)):
        for c in range(3):
            a = atoms.copy()
            a.positions[k, c] += h
            ep = energy_forces(model, a)[0]
            a.positions[k, c] -= 2 * h
            fd[k, c] = -(ep - energy_forces(model, a)[0]) / (2 * h)
    np.testing.assert_allclose(forces, fd, rtol=1e-6, atol=1e-8)


def test_invariances(model):
    """Translation and permutation exactly (float64 rounding); rotation within the Lebedev
    quadrature error (the grid resolves θ_max · extent to 1e-3 per pair kernel)."""
    atoms = pair_of_molecules()
    e0, f0 = energy_forces(model, atoms)
    moved = atoms.copy()
    moved.positions += [3.7, -12.0, 40.0]
    e1, f1 = energy_forces(model, moved)
    assert e1 == pytest.approx(e0, abs=1e-9)
    np.testing.assert_allclose(f1, f0, atol=1e-9)
    perm = np.random.default_rng(0).permutation(len(atoms))
    e2, f2 = energy_forces(model, atoms[perm])
    assert e2 == pytest.approx(e0, abs=1e-9)
    np.testing.assert_allclose(f2, f0[perm], atol=1e-9)
    rot = Rotation.from_euler("xyz", [0.3, -1.1, 2.0])
    turned = atoms.copy()
    turned.positions = rot.apply(atoms.positions)
    e3, f3 = energy_forces(model, turned)
    network = abs(e0 - sum(REFS[z] for z in atoms.numbers))
    assert abs(e3 - e0) < 1e-3 * network
    np.testing.assert_allclose(f3, rot.apply(np.array(f0)), atol=1e-3 * np.abs(f0).max())


def test_efa_couples_molecules_beyond_the_receptive_field():
    """Without EFA, moving the water 12 -> 13 Å away leaves the ethanol's forces unchanged (no
    pair within 2 x 4 Å); with EFA they change."""
    for efa, changes in ((False, False), (True, True)):
        m = make_model(efa=efa)
        f_near = energy_forces(m, pair_of_molecules(12.0))[1][:9]
        f_far = energy_forces(m, pair_of_molecules(13.0))[1][:9]
        moved = np.abs(f_near - f_far).max()
        assert (moved > 1e-6) == changes, (efa, moved)


def test_batching_and_padding_change_nothing(model):
    mols = [pair_of_molecules(9.0), molecule("H2O")]
    mols[1].positions += 30.0  # far from the origin: centring is per structure
    alone = [energy_forces(model, a) for a in mols]
    nls = [neighbour_list(a.positions, np.zeros((3, 3)), np.zeros(3, bool), model.cutoff)
           for a in mols]
    cap = Capacity(atoms=24, pairs=sum(len(n.centers) for n in nls) + 32, structures=4)
    graph = pack([a.numbers for a in mols], [a.positions for a in mols], np.zeros((2, 3, 3)),
                 nls, cap, np.float64, charge=[0.0, 0.0], spin=[0.0, 0.0])
    pred = model.predict(graph)
    offset = 0
    for s, (e, f) in enumerate(alone):
        assert float(pred.energy[s]) == pytest.approx(e, abs=1e-9)
        np.testing.assert_allclose(np.asarray(pred.forces)[offset:offset + len(f)], f, atol=1e-9)
        offset += len(f)


def test_periodic_and_too_large_structures_are_refused(model):
    box = molecule("H2O")
    box.cell, box.pbc = np.eye(3) * 10.0, True
    with pytest.raises(ValueError, match="periodic structures are not supported"):
        model.graph(box)
    chain = Atoms("H2", positions=[[0, 0, 0], [30.0, 0, 0]])
    with pytest.raises(ValueError, match="max_extent"):
        model.graph(chain)


def test_float32_inference_engine_and_calculator_agree():
    """The float32 inference path (spline tables, fused kernels) with EFA against the float64
    model, and the MD engine's energy function against the calculator."""
    from so3krates.md.system import System, model_energy_fn
    from so3krates.neighbours import verlet
    from so3krates.potential import derive

    m64, atoms = make_model(), pair_of_molecules(9.0)
    m32 = Model(".", m64.config, m64.params, REFS, 1.0, "float32")
    (e64, f64), (e32, f32) = energy_forces(m64, atoms), energy_forces(m32, atoms)
    assert e32 == pytest.approx(e64, abs=2e-3)
    np.testing.assert_allclose(f32, f64, atol=2e-3 * max(1.0, np.abs(f64).max()))
    system = System.from_atoms(atoms)
    spec = verlet.allocate(atoms.positions, system.cell, system.pbc, m64.cutoff, 0.5)
    r, cell = jnp.asarray(atoms.positions), jnp.asarray(system.cell)
    nbrs = jax.jit(verlet.build, static_argnums=2)(r, cell, spec)
    out = jax.jit(derive(model_energy_fn(m64, system)))(r, cell, nbrs)
    assert float(out.energy) == pytest.approx(e64, abs=1e-9)
    np.testing.assert_allclose(np.asarray(out.forces), f64, atol=1e-9)


def test_training_with_efa_saves_and_reloads(tmp_path):
    from so3krates.config import load_config
    from so3krates.datasets import shipped_dataset_path
    from so3krates.training.trainer import load_training_data, train

    cfg = load_config(None, [
        f"data.path={shipped_dataset_path()}", "data.n_train=16", "data.n_valid=4",
        "data.n_test=4", "model.features=16", "model.num_layers=1", "model.degrees=[1,2]",
        "model.num_radial=8", "model.efa.enabled=true", "model.efa.frequencies=4",
        "training.max_steps=20", "training.valid_every=10", "training.progress=false"])
    data = load_training_data(cfg)
    train(cfg, tmp_path / "m", data=data, console="stderr")
    model = load_model(tmp_path / "m")
    assert model.config.efa.enabled and model.module.efa_blocks == (0,)
    assert "efa_0" in model.params
    e, f = energy_forces(model, molecule("CH3CH2OH"))
    assert np.isfinite(e) and np.isfinite(f).all()


def test_efa_together_with_the_long_range_terms():
    """EFA and charge/spin embedding, electrostatics, dispersion and ZBL in one model: finite,
    every term reported, translation invariant."""
    from test_long_range import ALL_TERMS

    cfg = small_config(features=16, num_layers=2, degrees=[1, 2], num_radial=8, **ALL_TERMS,
                       efa=EFAConfig(enabled=True, frequencies=4, max_extent=24.0))
    atoms = pair_of_molecules(9.0)
    atoms.info["charge"] = 1.0
    g, _ = single_graph(atoms.numbers, atoms.positions, np.zeros((3, 3)), np.zeros(3, bool),
                        cfg.cutoff, dtype=np.float64, long_range=True)
    params = perturbed(init_params(build_module(cfg), g, 0), scale=0.05)
    model = Model(".", cfg, params, REFS, 1.0, "float64")
    pred = model.predict(model.graph(atoms)[0])
    assert set(pred.energy_terms) == {"network", "zbl", "electrostatics", "dispersion"}
    assert np.isfinite(float(pred.energy[0]))
    assert abs(float(np.sum(pred.charges)) - 1.0) < 1e-12
    moved = atoms.copy()
    moved.positions += [5.0, -3.0, 1.0]
    e1 = float(model.predict(model.graph(moved)[0]).energy[0])
    assert e1 == pytest.approx(float(pred.energy[0]), abs=1e-9)
