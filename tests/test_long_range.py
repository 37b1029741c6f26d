"""A model with every long-range term on (charge/spin embedding, partial charges with damped
Coulomb, learned TS dispersion, ZBL): exact properties in float64, and the calculator, MD,
training and evaluation paths (the terms themselves: test_terms.py, test_ewald.py)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from scipy.spatial.transform import Rotation

from conftest import small_config
from so3krates.batching import Capacity, pack, single_graph
from so3krates.model_io import Model, build_module, init_params, load_model, save_model
from so3krates.neighbours import long_range_list, neighbour_list
from so3krates.potential import make_predict_fn
from so3krates.terms.physical import PhysicalTerms

ALL_TERMS = dict(charge_spin=True, electrostatics=True, dispersion="learned", zbl=True)
REFS = {1: -13.6, 6: -1030.0, 8: -2040.0}


def perturbed(params, seed: int = 1, scale: float = 0.02):
    """Parameters with every leaf perturbed: zero-initialised heads would hide the terms."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return tree.unflatten([x + scale * jax.random.normal(k, x.shape, x.dtype)
                           for x, k in zip(leaves, keys)])


def make_model(long_range_cutoff=None, **kw) -> Model:
    cfg = small_config(features=16, num_layers=2, degrees=[1, 2], num_radial=8,
                       long_range_cutoff=long_range_cutoff, **{**ALL_TERMS, **kw})
    a = molecule("CH3CH2OH")
    g, _ = single_graph(a.numbers, a.positions, np.zeros((3, 3)), np.zeros(3, bool),
                        cfg.cutoff, dtype=np.float64, long_range=True)
    params = perturbed(init_params(build_module(cfg), g, 0))
    return Model(".", cfg, params, REFS, 1.0, "float64")


@pytest.fixture(scope="module")
def model() -> Model:
    return make_model()


def ethanol(charge: float = 0.0, spin: float = 0.0) -> Atoms:
    a = molecule("CH3CH2OH")
    a.rattle(0.05, seed=3)
    a.info.update(charge=charge, spin=spin)
    return a


def predict(model: Model, atoms: Atoms):
    graph, _ = model.graph(atoms)
    return model.predict(graph), len(atoms)


def test_every_term_contributes_and_charges_sum_to_q(model):
    for q in (0.0, 1.0, -1.0):
        pred, n = predict(model, ethanol(q))
        charges = np.asarray(pred.charges)
        assert abs(charges[:n].sum() - q) < 1e-12
        assert np.all(charges[n:] == 0.0)
        terms = {k: float(v[0]) for k, v in pred.energy_terms.items()}
        assert set(terms) == {"network", "zbl", "electrostatics", "dispersion"}
        assert all(abs(v) > 1e-6 for v in terms.values()), terms
        assert abs(sum(terms.values()) - float(pred.energy[0])) < 1e-9
        # the dipole is the charges' first moment
        r = ethanol(q).positions
        assert np.allclose(np.asarray(pred.dipole)[0], charges[:n] @ r, atol=1e-12)


def test_charge_and_spin_change_the_energy_of_one_geometry(model):
    e = {(q, s): float(predict(model, ethanol(q, s))[0].energy[0])
         for q, s in ((0, 0), (1, 0), (0, 1), (1, 1))}
    values = sorted(e.values())
    assert min(np.diff(values)) > 1e-4, e


def test_invariances_with_every_term(model):
    atoms = ethanol(1.0, 1.0)
    p0, n = predict(model, atoms)
    e0, f0 = float(p0.energy[0]), np.asarray(p0.forces)[:n]
    rng = np.random.default_rng(0)
    for seed in (1, 2):
        q = Rotation.random(random_state=seed).as_matrix()
        moved = atoms.copy()
        moved.positions = atoms.positions @ q.T + rng.normal(size=3) * 4.0
        p1, _ = predict(model, moved)
        assert abs(float(p1.energy[0]) - e0) < 1e-10 * abs(e0)
        assert np.abs(np.asarray(p1.forces)[:n] - f0 @ q.T).max() < 1e-9
    perm = rng.permutation(n)
    p2, _ = predict(model, atoms[perm])
    assert abs(float(p2.energy[0]) - e0) < 1e-10 * abs(e0)
    assert np.abs(np.asarray(p2.forces)[:n] - f0[perm]).max() < 1e-9


@pytest.mark.parametrize("long_range_cutoff", [None, 3.0])
def test_forces_are_minus_gradient_with_every_term(long_range_cutoff):
    model = make_model(long_range_cutoff)
    atoms = ethanol(1.0)
    pred, n = predict(model, atoms)
    forces = np.asarray(pred.forces)[:n]
    h, fd = 1e-5, np.zeros_like(forces)
    for a in (0, 2, 5):  # C, O and an H (each call is a compiled prediction)
        for k in range(3):
            e = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[a, k] += sign * h
                e.append(float(predict(model, moved)[0].energy[0]))
            fd[a, k] = -(e[0] - e[1]) / (2 * h)
    checked = [0, 2, 5]
    assert np.abs(fd[checked] - forces[checked]).max() < 1e-6 * max(1.0, np.abs(forces).max())


def test_energy_continuous_across_the_long_range_cutoff():
    """Two molecules drifting apart through the long-range cutoff (beyond the network's)."""
    model = make_model(long_range_cutoff=8.0)
    energies = []
    for d in (8.0 - 1e-6, 8.0 + 1e-6):
        atoms = Atoms("OH", positions=[[0, 0, 0], [0, 0, d]])
        atoms.info["charge"] = 0.0
        pred, _ = predict(model, atoms)
        energies.append(float(pred.energy[0]))
        assert float(pred.energy_terms["electrostatics"][0]) != 0.0 or d > 8.0
    assert abs(energies[0] - energies[1]) < 1e-9


def test_padding_and_batching_change_nothing(model):
    """Two structures in one padded batch (more atoms, pairs and long-range pairs than needed)
    give what each gives alone."""
    structures = [ethanol(1.0, 0.0), ethanol(-1.0, 1.0)]
    structures[1].positions += 0.1
    predict_fn = make_predict_fn(model.module, model._refs, terms=model.terms)
    nls = [neighbour_list(a.positions, np.zeros((3, 3)), a.pbc, model.cutoff) for a in structures]
    lrs = [long_range_list(a.positions, np.zeros((3, 3)), a.pbc, None) for a in structures]
    cap = Capacity(atoms=40, pairs=sum(len(x.centers) for x in nls) + 32, structures=4,
                   long_pairs=sum(len(x.centers) for x in lrs) + 48)
    g = pack([a.numbers for a in structures], [a.positions for a in structures],
             np.zeros((2, 3, 3)), nls, cap, np.float64, charge=[1.0, -1.0], spin=[0.0, 1.0],
             long_range_lists=lrs)
    batch = predict_fn(model.inference_params, g)
    for k, a in enumerate(structures):
        alone, n = predict(model, a)
        off = 0 if k == 0 else len(structures[0])
        assert abs(float(batch.energy[k]) - float(alone.energy[0])) < 1e-9
        assert np.abs(np.asarray(batch.forces)[off:off + n] - np.asarray(alone.forces)[:n]).max() < 1e-9
        assert np.abs(np.asarray(batch.charges)[off:off + n] - np.asarray(alone.charges)[:n]).max() < 1e-12
        assert np.abs(np.asarray(batch.dipole)[k] - np.asarray(alone.dipole)[0]).max() < 1e-12


def test_calculator_reports_terms_and_follows_the_charge_without_recompiling(model):
    atoms = ethanol()
    calc = model.calculator()
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    assert set(calc.results["energy_terms"]) == {"network", "zbl", "electrostatics", "dispersion"}
    assert abs(atoms.get_charges().sum()) < 1e-12
    assert atoms.get_dipole_moment().shape == (3,)
    atoms.info["charge"] = 1.0
    e1 = atoms.get_potential_energy()
    assert abs(e1 - e0) > 1e-4
    assert abs(atoms.get_charges().sum() - 1.0) < 1e-12
    assert calc.compiled_variants() == 1


def test_md_engine_energy_equals_the_calculator_s(model):
    """The engine's energy function (device Verlet list, long-range pairs: every pair as
    constants) gives the energy and forces of the padded-graph path."""
    import jax.numpy as jnp

    from so3krates.md.system import System, model_energy_fn
    from so3krates.neighbours import verlet
    from so3krates.potential import derive

    atoms = ethanol(1.0, 1.0)
    system = System.from_atoms(atoms)
    assert (system.charge, system.spin) == (1.0, 1.0)
    spec = verlet.allocate(atoms.positions, system.cell, system.pbc, model.cutoff, 0.5)
    r, cell = jnp.asarray(atoms.positions), jnp.asarray(system.cell)
    out = derive(model_energy_fn(model, system))(r, cell, verlet.build(r, cell, spec))
    pred, n = predict(model, atoms)
    assert abs(float(out.energy) - float(pred.energy[0])) < 1e-9
    assert np.abs(np.asarray(out.forces) - np.asarray(pred.forces)[:n]).max() < 1e-10


def test_md_engine_conserves_energy_with_long_range_terms(tmp_path):
    """NVE of a charged molecule in the compiled engine. Without ZBL: the untrained network
    does not balance its tens of eV/Å at bond lengths (training does)."""
    atoms = ethanol(1.0)
    atoms.rattle(0.02, seed=5)
    drift, summary = nve_drift(make_model(zbl=False), atoms, tmp_path)
    assert drift < 0.05, summary


def nve_drift(model, atoms, tmp_path) -> tuple[float, dict]:
    """|conserved-energy drift| (meV/atom) of 400 NVE steps of 0.25 fs at 100 K, float64,
    through ``so3krates md``'s runner, and the run's summary."""
    from so3krates.md.run import MDSettings, run_md

    save_model(tmp_path / "m", model.config, model.params, REFS, 1.0)
    settings = MDSettings(ensemble="nve", temperature=100.0, timestep=0.25, steps=400, stride=20,
                          dtype="float64", monitor=False)
    summary = run_md(tmp_path / "m", atoms, tmp_path / "nve.xyz", settings, progress=False)
    return abs(summary["conserved_energy_drift_meV_per_atom_this_run"]), summary


def test_training_learns_charges_and_dipoles(tmp_path):
    """A few steps on the shipped charged chains: the model file keeps its terms, the loss has
    dipole and charge parts, and evaluation reports their errors and each term's energy."""
    from so3krates.config import load_config
    from so3krates.datasets import shipped_dataset_path
    from so3krates.evaluate import evaluate_model
    from so3krates.training.trainer import load_training_data, train

    cfg = load_config(None, [
        f"data.path={shipped_dataset_path('charged_gfn2')}", "data.charges_key=partial_charges",
        "data.n_train=24", "data.n_valid=8", "data.n_test=8", "model.features=16",
        "model.num_layers=1", "model.degrees=[1,2]", "model.num_radial=8",
        "model.charge_spin=true", "model.electrostatics=true", "model.zbl=true",
        # the charges alone, at a constant rate: 60 steps must teach the charge head
        "training.energy_weight=0.0", "training.forces_weight=0.0", "training.charges_weight=1.0",
        "training.decay_steps=100000", "training.max_steps=60", "training.valid_every=30",
        "training.progress=false"])
    data = load_training_data(cfg)
    train(cfg, tmp_path / "m", data=data, console="stderr")
    model = load_model(tmp_path / "m")
    assert model.terms == PhysicalTerms(zbl=True, electrostatics=True, cutoff=5.0)
    metrics = evaluate_model(model, data.subset(np.arange(8)))[0]
    for key in ("dipole_mae", "charges_mae", "energy_terms_mean"):
        assert key in metrics
    # an untrained charge head predicts Q/n on every atom: training must beat it
    naive = np.concatenate([np.full(len(q), data.charge[k] / len(q)) - q
                            for k, q in enumerate(data.charges[:8])])
    assert metrics["charges_mae"] < np.mean(np.abs(naive))


def test_periodic_dispersion_and_zbl_stress_equals_finite_differences():
    """Learned dispersion (long-range half list with lattice images, 7 Å in a 5 Å cell) and ZBL
    in a triclinic cell: the stress is the strain derivative of the same energy."""
    from ase.stress import voigt_6_to_full_3x3_stress

    from test_stress import finite_difference_stress

    model = make_model(long_range_cutoff=7.0, charge_spin=False, electrostatics=False)
    atoms = Atoms("SiCH2", cell=[[5.0, 0.0, 0.0], [0.8, 5.2, 0.0], [0.3, -0.4, 5.4]], pbc=True,
                  scaled_positions=[[0.1, 0.1, 0.1], [0.4, 0.5, 0.3], [0.7, 0.2, 0.8],
                                    [0.2, 0.7, 0.6]])
    model.reference_energies[14] = -100.0
    model = Model(".", model.config, model.params, model.reference_energies, 1.0, "float64")
    calc = model.calculator()
    atoms.calc = calc
    sigma = voigt_6_to_full_3x3_stress(atoms.get_stress())
    assert abs(calc.results["energy_terms"]["dispersion"]) > 1e-4
    fd = finite_difference_stress(atoms, calc.get_potential_energy)
    assert np.abs(fd).max() > 1e-3
    np.testing.assert_allclose(sigma, fd, rtol=1e-6, atol=1e-9)
