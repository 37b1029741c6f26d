"""Long-range terms side by side: a local model against one with charge/spin embedding and
learned partial charges with electrostatics (optionally ZBL and dispersion), same data, same
model size, same wall-clock budget (one process, one XLA thread each).

Datasets: the 4G-HDNNP carbon chains (``../shared/data/charged/ko2021_carbon_chain_4g.extxyz``,
C10H2 and C10H3+ with Hirshfeld charges), the F- + CH3I SN2 path
(``../shared/data/efa/sn2_F_I.npz``, charge -1, energies only) and the shipped GFN2-xTB chains
(``charged_gfn2``: C10H2/C10H3+ plus vertical radicals, Mulliken charges and dipoles). Run from
the repository root::

    .venv/bin/python benchmarks/long_range.py --minutes 4 --parallel 2

``--phase cost`` times energy+forces (boxes: and stress) of ethanol clusters and periodic
boxes of ~1k, ~3k and ~10k atoms for the local model and with every term on (the terms' cost
relative to the network; boxes with the Ewald sum over k-vectors and on a PME mesh)::

    .venv/bin/python benchmarks/long_range.py --phase cost --molecules 111,370,1111
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


def ethanol_system(n_molecules: int, periodic: bool, seed: int = 0):
    """Randomly oriented ethanol molecules on a 5 Å grid (0.072 atoms/Å³, like a loose
    liquid): an open cluster, or a cubic-ish periodic box of the grid."""
    from ase.build import molecule

    side = int(np.ceil(n_molecules ** (1 / 3)))
    grid = (side, side, int(np.ceil(n_molecules / side**2)))
    rng = np.random.default_rng(seed)
    atoms = None
    for k in range(n_molecules):
        m = molecule("CH3CH2OH")
        m.rotate(rng.uniform(0, 360), rng.normal(size=3))
        m.translate(5.0 * np.array(np.unravel_index(k, grid), float) + 2.5)
        atoms = m if atoms is None else atoms + m
    if periodic:
        atoms.cell = 5.0 * np.diag(grid)
        atoms.pbc = True
    atoms.info["charge"] = 0.0
    return atoms


TERMS = ["model.charge_spin=true", "model.electrostatics=true", "model.zbl=true",
         "model.dispersion=learned", "model.long_range_cutoff=10.0"]
COST_VARIANTS = {  # terms_ewald of a cluster: every term, no k-space part
    "local": [],
    "terms_ewald": TERMS + ["model.kspace_method=ewald"],
    "terms_pme": TERMS + ["model.kspace_method=pme"],
    # one term at a time (10 Å long-range pairs where a term needs them)
    "zbl": ["model.zbl=true"],
    "charge_spin": ["model.charge_spin=true"],
    "electrostatics": ["model.electrostatics=true", "model.long_range_cutoff=10.0"],
    "dispersion_learned": ["model.dispersion=learned", "model.long_range_cutoff=10.0"],
    "dispersion_d3": ["model.dispersion=d3", "model.long_range_cutoff=10.0"],
}


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads): the work done, which other load
    on the machine inflates far less than the wall time."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def engine_step(model, atoms):
    """A call of the MD engine's force evaluation (the in-loop neighbour update and energy,
    forces and virial from ``model_energy_fn``), compiled, on ``atoms``' positions."""
    import jax
    import jax.numpy as jnp

    from so3krates.md.system import System, long_range_cutoff, model_energy_fn
    from so3krates.neighbours import verlet
    from so3krates.potential import derive

    system = System.from_atoms(atoms)
    spec = verlet.allocate(atoms.positions, system.cell, system.pbc, model.cutoff, 0.5,
                           long_cutoff=long_range_cutoff(model))
    r, cell = jnp.asarray(atoms.positions, jnp.float32), jnp.asarray(system.cell, jnp.float32)
    nbrs = jax.jit(verlet.build, static_argnums=2)(r, cell, spec)
    force = derive(model_energy_fn(model, system), virial=True)

    @jax.jit
    def step(r, nbrs):
        new = verlet.update(r, cell, nbrs, spec)
        return force(r, cell, new), new

    state = {"r": r}

    def call():
        state["r"] = state["r"] + 1e-4
        out, _ = step(state["r"], nbrs)
        jax.block_until_ready(out)

    return call


def term_cost(n_molecules: int, periodic: bool, variants: list[str], size: str,
              repeats: int = 7) -> dict:
    """Energy+forces (and for boxes stress) time through the ASE calculator of an ethanol
    cluster or box, for the local model and with every term on (charge/spin, electrostatics,
    ZBL, learned dispersion within 10 Å; boxes: the Ewald sum over k-vectors or on a PME
    mesh), and of the MD engine's force evaluation (:func:`engine_step`: no host neighbour
    list); untrained models, float32. Each variant is compiled first, then the variants are
    timed in turn ``repeats`` times (interleaved, so that a change in the machine's load hits
    all of them alike) and the medians of wall and process CPU time kept. ``size``: "default" (the package's model) or
    "small" (the training benchmark's F=64, 2 blocks)."""
    from so3krates.batching import single_graph
    from so3krates.config import load_config
    from so3krates.model_io import Model, build_module, init_params
    from so3krates.terms.physical import PhysicalTerms

    atoms = ethanol_system(n_molecules, periodic)
    row = {"system": "box" if periodic else "cluster", "n_atoms": len(atoms), "model": size}
    if periodic:
        row["box_A"] = np.diag(atoms.cell[:]).tolist()
    base = MODEL if size == "small" else []
    props = ("forces", "stress") if periodic else ("forces",)
    systems = {}
    for name in variants:
        if not periodic and name == "terms_pme":
            continue
        cfg = load_config(None, base + COST_VARIANTS[name]).model
        graph, _ = single_graph(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc,
                                cfg.cutoff, **PhysicalTerms.from_config(cfg).single_graph_options())
        params = init_params(build_module(cfg), graph, 0)
        model = Model(Path("."), cfg, params, {1: 0.0, 6: 0.0, 8: 0.0}, 1.0, "float32")
        if graph.ewald is not None:
            if graph.ewald.mesh is not None:
                row["pme_mesh"] = list(graph.ewald.mesh.shape)
            else:
                row["kvectors"] = int((np.abs(graph.ewald.kvectors[0]).sum(axis=1) > 0).sum())
        if graph.long_range is not None:
            row["long_range_pairs"] = int(np.asarray(graph.long_range.mask).sum())
        copy = atoms.copy()
        copy.calc = model.calculator()
        calls = {prop: (lambda c=copy, p=prop: getattr(c, f"get_{p}")()) for prop in props}
        calls["engine"] = engine_step(model, atoms)
        for prop, call in calls.items():  # compile
            t = time.perf_counter()
            call()
            row[f"{name}_{prop}_first_s"] = time.perf_counter() - t
        systems[name] = (copy, calls)
    props = props + ("engine",)
    times = {(name, prop): [] for name in systems for prop in props}
    cpu = {(name, prop): [] for name in systems for prop in props}
    for _ in range(repeats):
        for name, (copy, calls) in systems.items():
            for prop in props:
                copy.positions += 1e-4
                c, t = _cpu_seconds(), time.perf_counter()
                calls[prop]()
                times[name, prop].append(time.perf_counter() - t)
                cpu[name, prop].append(_cpu_seconds() - c)
    for (name, prop), ts in times.items():
        row[f"{name}_{prop}_ms"] = 1e3 * float(np.median(ts))
        row[f"{name}_{prop}_cpu_ms"] = 1e3 * float(np.median(cpu[name, prop]))
        if name != "local" and "local" in systems:
            row[f"ratio_{name}_{prop}"] = row[f"{name}_{prop}_ms"] / (
                1e3 * float(np.median(times["local", prop])))
            row[f"cpu_ratio_{name}_{prop}"] = row[f"{name}_{prop}_cpu_ms"] / (
                1e3 * float(np.median(cpu["local", prop])))
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phase", choices=["train", "cost", "one"], default="train")
    p.add_argument("--molecules", default="111,370,1111",
                   help="cost: ethanol molecules per system (9 atoms each)")
    p.add_argument("--systems", default="cluster,box", help="cost: cluster and/or box")
    p.add_argument("--cost-variants", default="local,terms_ewald,terms_pme")
    p.add_argument("--model-size", choices=["default", "small"], default="default")
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
    if args.phase == "cost":
        rows = results.setdefault("term_cost", [])
        for n in map(int, args.molecules.split(",")):
            for system in args.systems.split(","):
                rows.append(term_cost(n, system == "box", args.cost_variants.split(","),
                                      args.model_size))
                path.write_text(json.dumps(results, indent=1))
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
