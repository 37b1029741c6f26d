"""Long-range terms side by side: a local model against one with charge/spin embedding and
learned partial charges with electrostatics (optionally ZBL and dispersion), same data, same
model size, same wall-clock budget (one process, one XLA thread each).

Datasets: the 4G-HDNNP carbon chains (``../shared/data/charged/ko2021_carbon_chain_4g.extxyz``,
C10H2 and C10H3+ with Hirshfeld charges), the F- + CH3I SN2 path
(``../shared/data/efa/sn2_F_I.npz``, charge -1, energies only) and the shipped GFN2-xTB chains
(``charged_gfn2``: C10H2/C10H3+ plus vertical radicals, Mulliken charges and dipoles). Run from
the repository root::

    .venv/bin/python benchmarks/long_range.py --minutes 4 --parallel 2

The timing part (``--phase timing``) measures energy+forces of a molecular cluster of ~1k
atoms for the local model and with every term on (the terms' cost relative to the network);
``--phase periodic-timing`` the same for periodic boxes (~1k and ~3k atoms) with the Ewald
sum and dispersion.
Writes ``benchmarks/results/long_range_<machine>_<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

MODEL = ["model.features=64", "model.num_layers=2", "model.degrees=[1,2]"]
VARIANTS = {
    "local": [],
    "charge_spin": ["model.charge_spin=true"],
    "electrostatics": ["model.charge_spin=true", "model.electrostatics=true", "model.zbl=true"],
    "all_terms": ["model.charge_spin=true", "model.electrostatics=true", "model.zbl=true",
                  "model.dispersion=learned"],
}
DATASETS = {
    "ko2021_chains": (SHARED / "charged" / "ko2021_carbon_chain_4g.extxyz",
                      ["data.charges_key=hirshfeld_charges", "data.n_train=90", "data.n_valid=10"]),
    "sn2_F_I": (SHARED / "efa" / "sn2_F_I.npz",
                ["data.default_charge=-1", "data.n_train=300", "data.n_valid=20",
                 "training.energy_weight=1.0", "training.forces_weight=0.0"]),
    "charged_gfn2": (None, ["data.charges_key=partial_charges", "data.n_train=300",
                            "data.n_valid=20"]),
}


def train_and_test(dataset: str, variant: str, minutes: float, workdir: Path) -> dict:
    """Train one model (in this process) and evaluate it on the held-out structures."""
    from so3krates.config import load_config
    from so3krates.datasets import shipped_dataset_path
    from so3krates.evaluate import evaluate_model
    from so3krates.model_io import load_model
    from so3krates.data.split import load_split
    from so3krates.training.trainer import load_training_data, train

    path, overrides = DATASETS[dataset]
    path = path or shipped_dataset_path(dataset)
    out = workdir / f"{dataset}_{variant}"
    cfg = load_config(None, [f"data.path={path}", "training.progress=false",
                             f"training.max_time_minutes={minutes}", "training.valid_every=100",
                             *MODEL, *overrides, *VARIANTS[variant]])
    data = load_training_data(cfg)
    t0 = time.time()
    result = train(cfg, out, data=data, console="stderr")
    test = data.subset(load_split(out, len(data))["test"])
    metrics = evaluate_model(load_model(out), test)[0]
    return {"dataset": dataset, "variant": variant, "minutes": minutes, "steps": result.steps,
            "wall_s": time.time() - t0, "n_test": len(test), **{
                k: v for k, v in metrics.items() if not isinstance(v, dict)},
            "energy_terms_mean": metrics.get("energy_terms_mean")}


def timing(n_molecules: int = 111, repeats: int = 10) -> dict:
    """Energy+forces time through the calculator of a cluster of ethanol molecules (~1k atoms),
    local vs all terms (every pair, and pairs within 10 Å), untrained models of the benchmark's
    size."""
    from ase.build import molecule

    from so3krates.batching import single_graph
    from so3krates.config import load_config
    from so3krates.model_io import Model, build_module, init_params

    rng = np.random.default_rng(0)
    atoms = None
    for k in range(n_molecules):  # ethanol-like molecules on a loose grid, random orientation
        m = molecule("CH3CH2OH")
        m.rotate(rng.uniform(0, 360), rng.normal(size=3))
        m.translate(5.0 * np.array([k % 5, (k // 5) % 5, k // 25], float))
        atoms = m if atoms is None else atoms + m
    atoms.info["charge"] = 0.0
    out = {"n_atoms": len(atoms)}
    for name, extra in (("local", []), ("all_terms", []),
                        ("all_terms_cutoff10", ["model.long_range_cutoff=10.0"])):
        cfg = load_config(None, MODEL + VARIANTS[name.replace("_cutoff10", "")] + extra).model
        graph, _ = single_graph(atoms.numbers, atoms.positions, np.zeros((3, 3)), atoms.pbc,
                                cfg.cutoff, long_range=True,
                                long_range_cutoff=cfg.long_range_cutoff)
        params = init_params(build_module(cfg), graph, 0)
        model = Model(Path("."), cfg, params, {1: 0.0, 6: 0.0, 8: 0.0}, 1.0, "float32")
        calc = model.calculator()
        atoms.calc = calc
        atoms.get_forces()
        times = []
        for _ in range(repeats):
            atoms.positions += 1e-4
            t = time.perf_counter()
            atoms.get_forces()
            times.append(time.perf_counter() - t)
        out[f"{name}_ms"] = 1e3 * float(np.median(times))
    out["ratio_all_pairs"] = out["all_terms_ms"] / out["local_ms"]
    out["ratio_cutoff10"] = out["all_terms_cutoff10_ms"] / out["local_ms"]
    return out


def periodic_timing(grids=((5, 5, 4), (8, 8, 5)), repeats: int = 5) -> list[dict]:
    """Energy+forces(+stress) time through the calculator of periodic boxes of ethanol
    molecules (~1k and ~3k atoms, 0.07 atoms/Å³), local vs electrostatics (an Ewald sum,
    real space within 10 Å) with learned dispersion, untrained models of the benchmark's
    size: the cost of periodic long-range terms, and its growth with the box (the Ewald
    k-space part grows as N x K, K ∝ V)."""
    from ase.build import molecule

    from so3krates.batching import single_graph
    from so3krates.config import load_config
    from so3krates.model_io import Model, build_module, init_params
    from so3krates.terms.physical import PhysicalTerms

    rows = []
    for grid in grids:
        rng = np.random.default_rng(0)
        atoms = None
        for k in range(int(np.prod(grid))):
            m = molecule("CH3CH2OH")
            m.rotate(rng.uniform(0, 360), rng.normal(size=3))
            m.translate(5.0 * np.array(np.unravel_index(k, grid), float) + 2.5)
            atoms = m if atoms is None else atoms + m
        atoms.cell = 5.0 * np.diag(grid)
        atoms.pbc = True
        atoms.info["charge"] = 0.0
        row = {"n_atoms": len(atoms), "box_A": (5.0 * np.asarray(grid)).tolist()}
        for name, extra in (("local", []), ("ewald_dispersion", [
                "model.charge_spin=true", "model.electrostatics=true",
                "model.dispersion=learned", "model.long_range_cutoff=10.0"])):
            cfg = load_config(None, MODEL + extra).model
            graph, _ = single_graph(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc,
                                    cfg.cutoff, **PhysicalTerms.from_config(cfg).graph_options())
            params = init_params(build_module(cfg), graph, 0)
            model = Model(Path("."), cfg, params, {1: 0.0, 6: 0.0, 8: 0.0}, 1.0, "float32")
            if graph.ewald is not None:
                row["kvectors"] = int((np.abs(graph.ewald.kvectors[0]).sum(axis=1) > 0).sum())
            calc = model.calculator()
            atoms.calc = calc
            for prop in ("forces", "stress"):
                getattr(atoms, f"get_{prop}")()
                times = []
                for _ in range(repeats):
                    atoms.positions += 1e-4
                    t = time.perf_counter()
                    getattr(atoms, f"get_{prop}")()
                    times.append(time.perf_counter() - t)
                row[f"{name}_{prop}_ms"] = 1e3 * float(np.median(times))
        row["ratio_forces"] = row["ewald_dispersion_forces_ms"] / row["local_forces_ms"]
        row["ratio_stress"] = row["ewald_dispersion_stress_ms"] / row["local_stress_ms"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phase", choices=["train", "timing", "periodic-timing", "one"],
                   default="train")
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--variants", default="local,electrostatics")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--workdir", default="runs/long_range")
    p.add_argument("--json", default=None)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # dataset:variant (worker)
    args = p.parse_args()
    date = datetime.date.today().isoformat()
    path = Path(args.json or ROOT / "benchmarks" / "results" / f"long_range_epyc_{date}.json")
    workdir = Path(args.workdir)
    if args.phase == "one":
        dataset, variant = args.one.split(":")
        print(json.dumps(train_and_test(dataset, variant, args.minutes, workdir)))
        return
    results = json.loads(path.read_text()) if path.exists() else {"runs": []}
    if args.phase == "timing":
        results["timing"] = timing()
    elif args.phase == "periodic-timing":
        results["periodic_timing"] = periodic_timing()
    else:
        jobs = [(d, v) for d in args.datasets.split(",") for v in args.variants.split(",")
                if not any(r["dataset"] == d and r["variant"] == v for r in results["runs"])]
        env = {**os.environ, "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
               "intra_op_parallelism_threads=1"}
        while jobs:
            batch, jobs = jobs[: args.parallel], jobs[args.parallel:]
            procs = [subprocess.Popen(
                [sys.executable, __file__, "--phase", "one", "--one", f"{d}:{v}", "--minutes",
                 str(args.minutes), "--workdir", str(workdir)], stdout=subprocess.PIPE, env=env)
                for d, v in batch]
            for proc in procs:
                line = proc.communicate()[0].decode().strip().splitlines()
                if proc.returncode == 0 and line:
                    results["runs"].append(json.loads(line[-1]))
    results.update(machine="2-core AMD EPYC VM (CPU, JAX 0.10.2)", date=date,
                   model=MODEL, variants=VARIANTS)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
