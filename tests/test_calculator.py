"""The ASE calculator and model files: save/load, ase.md and ase.optimize, recompilation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from ase import units

import so3krates
from so3krates.batching import single_graph
from so3krates.calculator import So3kratesCalculator, changed_properties
from so3krates.data import read_dataset
from so3krates.datasets import shipped_dataset_path
from so3krates.model_io import ModelFileError, load_model


def ethanol_atoms(k: int = 0):
    return read_dataset(shipped_dataset_path()).to_atoms(k)


def test_calculator_results_consistent(trained_model_dir):
    atoms = ethanol_atoms()
    atoms.calc = So3kratesCalculator(trained_model_dir)
    e = atoms.get_potential_energy()
    assert np.isfinite(e)
    assert atoms.get_potential_energy(force_consistent=True) == e
    energies = atoms.get_potential_energies()
    assert energies.shape == (len(atoms),)
    assert abs(energies.sum() - e) < 1e-9 * abs(e)
    assert atoms.get_forces().shape == (len(atoms), 3)
    assert abs(e - (-309.8)) < 5.0  # the reference energies put it near the data


def test_changed_properties_match_ase():
    from ase.calculators.calculator import compare_atoms

    base = ethanol_atoms()
    edits = {
        "same": lambda a: None,
        "positions": lambda a: a.positions.__iadd__(1e-3),
        "positions within tol": lambda a: a.positions.__iadd__(1e-17),
        "positions NaN": lambda a: a.positions.__setitem__((0, 0), np.nan),
        "numbers": lambda a: a.numbers.__setitem__(0, 7),
        "cell": lambda a: a.set_cell(np.eye(3) * 10.0),
        "pbc": lambda a: a.set_pbc(True),
        "charges added": lambda a: a.set_initial_charges(np.ones(len(a))),
        "magmoms and positions": lambda a: (a.set_initial_magnetic_moments(np.ones(len(a))),
                                            a.positions.__isub__(0.5)),
        "fewer atoms": lambda a: a.pop(),
    }
    for name, edit in edits.items():
        new = base.copy()
        edit(new)
        for excluded in ((), ("positions",), ("cell", "initial_charges")):
            expected = compare_atoms(base, new, 1e-15, set(excluded))
            assert changed_properties(base, new, 1e-15, excluded) == expected, (name, excluded)
    assert changed_properties(None, base) == compare_atoms(None, base)


def test_float32_resolves_mev_on_large_totals(trained_model_dir):
    """Totals of ~-310 eV (and far larger for big molecules) keep meV resolution in float32."""
    atoms = ethanol_atoms(3)
    m32, m64 = load_model(trained_model_dir, "float32"), load_model(trained_model_dir, "float64")
    atoms.calc = m32.calculator()
    e32, f32 = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = m64.calculator()
    e64, f64 = atoms.get_potential_energy(), atoms.get_forces()
    assert abs(e32 - e64) < 1e-4
    assert np.abs(f32 - f64).max() < 1e-4
    # A 30-fold larger system (|E| ~ 10^4 eV): molecules far apart add exactly.
    big = atoms.copy()
    for k in range(1, 30):
        shifted = atoms.copy()
        shifted.positions += [20.0 * k, 0.0, 0.0]
        big += shifted
    big.calc = m32.calculator()
    assert abs(big.get_potential_energy() - 30 * e64) < 1e-3


def test_md_and_optimizer_without_recompiling(trained_model_dir):
    model = load_model(trained_model_dir, "float64")
    atoms = ethanol_atoms()
    atoms.calc = model.calculator()
    atoms.set_momenta(np.random.default_rng(0).normal(size=(len(atoms), 3)) * 0.3)
    e0 = atoms.get_total_energy()
    VelocityVerlet(atoms, 0.25 * units.fs).run(60)
    assert atoms.calc.compiled_variants() == 1, "atoms moving must not recompile"
    assert abs(atoms.get_total_energy() - e0) < 5e-3  # NVE, float64, short run
    atoms.positions += np.random.default_rng(1).normal(size=(len(atoms), 3)) * 0.05
    e_start, f_start = atoms.get_potential_energy(), np.abs(atoms.get_forces()).max()
    # A briefly trained tiny model has no physical global minimum; a short local relaxation
    # must still go downhill and reduce the forces.
    BFGS(atoms, logfile=None, maxstep=0.05).run(fmax=1e-3, steps=15)
    assert atoms.get_potential_energy() < e_start
    assert np.abs(atoms.get_forces()).max() < f_start
    assert atoms.calc.compiled_variants() == 1


def host_prediction(model, atoms):
    """Energy, forces, per-atom energies from a host neighbour list (``single_graph``)."""
    graph, _ = single_graph(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc,
                            model.cutoff, dtype=np.dtype(model.dtype))
    pred = model.predict(graph)
    n = len(atoms)
    return float(pred.energy[0]), np.asarray(pred.forces[:n]), np.asarray(pred.atomic_energies[:n])


def test_molecule_neighbour_list_on_device_grows_and_equals_host_list(trained_model_dir):
    """Molecules keep a Verlet list on the device; one that is too small grows (it never
    drops pairs) and the results equal those from a host neighbour list."""
    model = load_model(trained_model_dir, "float64")
    atoms = ethanol_atoms(2)
    calc = atoms.calc = model.calculator()
    atoms.get_forces()
    evaluator = calc._molecule
    evaluator.spec = evaluator.spec._replace(capacity=8, verlet_capacity=16, max_neighbours=2)
    evaluator._nbrs = None
    for step in range(3):  # the first call overflows and grows; atoms then move
        atoms.positions += np.random.default_rng(step).normal(size=(len(atoms), 3)) * 0.02
        e, f, ei = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_potential_energies()
        e_host, f_host, ei_host = host_prediction(model, atoms)
        assert abs(e - e_host) <= 1e-12 * abs(e_host)
        np.testing.assert_allclose(f, f_host, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ei, ei_host, rtol=0, atol=1e-10)
    assert evaluator.spec.capacity >= len(atoms) * (len(atoms) - 1) // 2
    # A periodic cell goes through the host neighbour list.
    atoms.cell, atoms.pbc = np.eye(3) * 9.0, True
    e_pbc = atoms.get_potential_energy()
    assert calc._molecule is None and abs(e_pbc - host_prediction(model, atoms)[0]) < 1e-12 * abs(e_pbc)


def test_unknown_element_is_a_clear_error(trained_model_dir):
    atoms = ethanol_atoms()
    atoms.numbers[0] = 17  # chlorine: not in the shipped data
    atoms.calc = So3kratesCalculator(trained_model_dir)
    with pytest.raises(ValueError, match=r"\[17\] were never seen"):
        atoms.get_potential_energy()


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="model.yaml is missing"):
        load_model(tmp_path)


def test_model_files_are_safe_and_readable(trained_model_dir):
    files = sorted(p.name for p in trained_model_dir.iterdir())
    assert "model.yaml" in files and "params.msgpack" in files
    text = (trained_model_dir / "model.yaml").read_text()
    assert "features: 16" in text and "reference_energies_eV" in text
    assert not any(p.suffix in (".pkl", ".pickle") for p in trained_model_dir.rglob("*"))


def test_load_in_new_process_gives_identical_predictions(trained_model_dir, tmp_path):
    atoms = ethanol_atoms(5)
    atoms.calc = So3kratesCalculator(trained_model_dir)
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    script = (
        "import json, sys, numpy as np\n"
        "import so3krates\n"
        "from so3krates.calculator import So3kratesCalculator\n"
        "from so3krates.data import read_dataset\n"
        "from so3krates.datasets import shipped_dataset_path\n"
        "a = read_dataset(shipped_dataset_path()).to_atoms(5)\n"
        f"a.calc = So3kratesCalculator({str(trained_model_dir)!r})\n"
        "print(json.dumps({'e': a.get_potential_energy(), 'f': a.get_forces().tolist()}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["e"] == e
    assert np.array_equal(np.array(got["f"]), f)


def test_public_api():
    assert hasattr(so3krates, "load_model") and hasattr(so3krates, "So3kratesCalculator")


def test_predict_fns_agree_across_pair_layouts(trained_model_dir):
    """``predict_halves_fn`` on a graph in the halves layout gives ``predict_fn``'s results on
    sorted pairs (float64: 1e-12; float32 with the fused CPU kernels: 1e-5), for a molecule and
    a periodic cell, and NaN on a graph in another layout."""
    atoms = ethanol_atoms(2)
    cell = atoms.copy()
    cell.set_cell(np.diag([6.0, 5.5, 5.0]))
    cell.pbc = True
    for dtype, tol in (("float64", 1e-12), ("float32", 1e-5)):
        model = load_model(trained_model_dir, dtype=dtype)
        for a in (atoms, cell):
            args = (a.numbers, a.positions, a.cell[:], a.pbc, model.cutoff)
            sorted_graph, cap = single_graph(*args, dtype=np.dtype(dtype))
            halves_graph, _ = single_graph(*args, cap, dtype=np.dtype(dtype), pair_halves=True)
            ref, out = model.predict(sorted_graph), model.predict(halves_graph, pair_halves=True)
            scale = np.abs(np.asarray(ref.forces)).max()
            np.testing.assert_allclose(out.energy[0], ref.energy[0], rtol=tol)
            np.testing.assert_allclose(out.forces, ref.forces, rtol=0, atol=tol * scale)
        assert np.isnan(model.predict(sorted_graph, pair_halves=True).energy[0])
