"""Euclidean fast attention (EFA) against the same local model: accuracy and cost.

``model.efa.enabled=true`` (docs/efa.md): accuracy where a local model cannot see (three
reference sets of the EFA paper) and the cost of energy + forces as the cluster grows.

Phases (``--phase``; ``all`` runs them in this order):

- ``cumulene``: ``../shared/data/efa/cumulene_profile.npz`` (13 atoms, rigid; the energy
  depends only on the relative twist of the two CH2 end groups, 11.5 Å apart): test energy and
  force errors. The training model has 2 blocks x 5 Å = a 10 Å receptive field.
- ``two_atoms``: ``../shared/data/efa/two_atoms.npz`` (H and He at 1-10 Å, a long-range pair
  curve): errors inside and beyond the 5 Å cutoff, and a plot of both models' energies and
  errors against the distance (``efa_two_atoms_<machine>_<date>.png``).
- ``sn2``: ``../shared/data/efa/sn2_F_I.npz`` (F- + CH3I, charge -1, energies only): test
  energy errors, overall and where F-C or C-I is beyond the cutoff; plot along the reaction
  coordinate (``efa_sn2_<machine>_<date>.png``).
- ``cost``: energy + forces through the ASE calculator of ethanol clusters of ~1e2 .. 1e5
  atoms (untrained models of the default size, 3 blocks, F = 128): median time after
  compilation and the peak RSS of one process per size and variant; log-log slopes of time
  against N for the local model, EFA in total and the EFA part (EFA minus local). EFA is timed
  twice: with the grid the cluster needs (max_extent covering it, the degree chosen for
  max_frequency x max_extent, growing with the cluster) and with a fixed grid (degree of the
  smallest cluster), which is the cost at constant max_frequency x max_extent. Sizes whose
  extrapolated memory or time is beyond ``--max-memory-gb`` / ``--cost-timeout`` are skipped
  (recorded with the reason); measurements are cached in ``<workdir>/cost/`` and reused.
  Then a second pass times local and fixed-grid EFA interleaved in one process per size
  (``interleaved``), so that both see the same load from other processes.

Training: both variants of a phase get the same split, model (F = 64, 2 blocks, degrees 1-2,
5 Å cutoff), training recipe (the package defaults) and the same budget in *steps* (not
wall-clock time: EFA costs more per step; the wall time of each run is recorded). Each run is
one process with one XLA thread; ``--parallel 2`` runs two at a time. Run from the repository
root::

    .venv/bin/python benchmarks/efa.py --phase all

(about 55 minutes on a shared 2-core EPYC VM: cumulene 10, two_atoms 6, sn2 12, cost 25;
``--phase cumulene`` etc. for one part,
``--steps-scale 0.05`` for a quick check that it runs). Writes
``benchmarks/results/efa_<machine>_<date>.json`` (a phase run again replaces its entry).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"

# The training model: long_range.py's size. 2 blocks x 5 Å = a 10 Å receptive field, below
# the 11.5-11.6 Å between the cumulene's end hydrogens (the only distances its twist changes).
MODEL = ["model.features=64", "model.num_layers=2", "model.degrees=[1,2]"]
TRAINING = ["training.progress=false"]

# Per phase: data, split, budget (steps; batch 2), validation interval, EFA settings.
# max_extent covers the largest structure (structure_extent, twice the largest distance from
# the centroid) with a margin; the degree follows from max_frequency x max_extent.
PHASES = {
    "cumulene": {
        "path": SHARED / "efa" / "cumulene_profile.npz",
        "data": ["data.n_train=500", "data.n_valid=50"],  # test: the other 450
        "steps": 8000, "valid_every": 500,
        "efa": ["model.efa.enabled=true", "model.efa.max_extent=13.0"],
    },
    "two_atoms": {
        "path": SHARED / "efa" / "two_atoms.npz",
        # Energies and forces weighted alike: the forces beyond the cutoff are ~0.01 eV/Å
        # against up to 10 eV/Å at the 1 Å wall, so the default 0.01 / 0.99 leaves the tail
        # energies (what this phase measures) almost out of the loss.
        "data": ["data.n_train=1000", "data.n_valid=100",  # test: the other 8900
                 "training.energy_weight=1.0", "training.forces_weight=1.0"],
        "steps": 8000, "valid_every": 500,
        "efa": ["model.efa.enabled=true", "model.efa.max_extent=11.0"],
    },
    "sn2": {
        "path": SHARED / "efa" / "sn2_F_I.npz",
        "data": ["data.default_charge=-1", "data.n_train=300", "data.n_valid=20",
                 "training.energy_weight=1.0", "training.forces_weight=0.0"],  # test: 81
        "steps": 6000, "valid_every": 500,
        "efa": ["model.efa.enabled=true", "model.efa.max_extent=21.0"],
    },
}
VARIANTS = ("local", "efa")
EXTRA_VARIANTS = {"local_cutoff10": ["model.cutoff=10.0"]}  # --variants local,efa,local_cutoff10


def run_overrides(phase: str, variant: str, steps: int) -> list[str]:
    spec = PHASES[phase]
    variant_overrides = (spec["efa"] if variant == "efa"
                         else EXTRA_VARIANTS.get(variant, []))
    return [f"data.path={spec['path']}", *TRAINING, f"training.max_steps={steps}",
            f"training.valid_every={spec['valid_every']}", *MODEL, *spec["data"],
            *variant_overrides]


def train_and_test(phase: str, variant: str, steps: int, workdir: Path,
                   extra: list[str]) -> dict:
    """Train one model (in this process), evaluate it on the held-out structures and save
    its test predictions (``predictions.npz`` in its run directory)."""
    from so3krates.config import load_config
    from so3krates.data.split import load_split
    from so3krates.evaluate import evaluate_model
    from so3krates.model_io import efa_settings, load_model
    from so3krates.training.trainer import load_training_data, train

    out = workdir / f"{phase}_{variant}"
    overrides = run_overrides(phase, variant, steps) + list(extra)
    cfg = load_config(None, overrides)
    data = load_training_data(cfg)
    t0 = time.time()
    result = train(cfg, out, data=data, console="stderr")
    train_s = time.time() - t0
    test_idx = load_split(out, len(data))["test"]
    test = data.subset(test_idx)
    model = load_model(out)
    metrics, energy, forces, _ = evaluate_model(model, test)
    np.savez(out / "predictions.npz", test_index=np.asarray(test_idx),
             energy=np.asarray(energy, np.float64), reference=np.asarray(test.energy, np.float64))
    settings = efa_settings(cfg.model)
    row = {"phase": phase, "variant": variant, "overrides": overrides, "steps": result.steps,
            "stop_reason": result.stop_reason, "train_wall_s": train_s,
            "steps_per_s": result.steps_per_second, "efa_degree": settings.get("efa_degree"),
            "best_valid": {k: v for k, v in result.best_valid.items()
                           if isinstance(v, (int, float))},
            "n_train": len(load_split(out, len(data))["train"]), "n_test": len(test),
            **{k: v for k, v in metrics.items() if not isinstance(v, dict)}}
    (out / "result.json").write_text(json.dumps(row))
    return row


def run_training(phase: str, variants: list[str], steps: int, workdir: Path, parallel: int,
                 extra: list[str]) -> list[dict]:
    """The variants of a phase, ``parallel`` processes at a time (one XLA thread each)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false "
           "intra_op_parallelism_threads=1"}
    rows, jobs = [], list(variants)
    workdir.mkdir(parents=True, exist_ok=True)
    while jobs:
        batch, jobs = jobs[:parallel], jobs[parallel:]
        procs = []
        for v in list(batch):
            out = workdir / f"{phase}_{v}"
            cached = out / "result.json"
            if cached.exists():  # a finished run of the same settings: reuse it
                row = json.loads(cached.read_text())
                if row["overrides"] == run_overrides(phase, v, steps) + list(extra):
                    print(f"{phase}:{v}: reusing {cached}", file=sys.stderr)
                    rows.append(row)
                    continue
            if out.exists():  # else the trainer would resume an older run there
                shutil.rmtree(out)
            log = open(workdir / f"{phase}_{v}.log", "w")
            cmd = [sys.executable, __file__, "--phase", "one", "--one", f"{phase}:{v}",
                   "--steps", str(steps), "--workdir", str(workdir)]
            for e in extra:
                cmd += ["--set", e]
            procs.append((v, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env)))
        for v, proc in procs:
            lines = proc.communicate()[0].decode().strip().splitlines()
            if proc.returncode == 0 and lines:
                rows.append(json.loads(lines[-1]))
            else:
                print(f"{phase}:{v} failed (exit {proc.returncode}); see "
                      f"{workdir / f'{phase}_{v}.log'}", file=sys.stderr)
    return rows


def errors(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> dict:
    d = pred[mask] - ref[mask]
    if d.size == 0:
        return {"n": 0}
    return {"n": int(d.size), "energy_mae": float(np.mean(np.abs(d))),
            "energy_rmse": float(np.sqrt(np.mean(d * d)))}


def two_atoms_analysis(rows: list[dict], workdir: Path, plot: Path) -> dict:
    """Errors inside and beyond the cutoff by distance, and the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = np.load(PHASES["two_atoms"]["path"])
    r_all = np.linalg.norm(raw["positions"][:, 0] - raw["positions"][:, 1], axis=1)
    out, lim = {}, 10.0
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for row in rows:
        p = np.load(workdir / f"two_atoms_{row['variant']}" / "predictions.npz")
        r = r_all[p["test_index"]]
        order = np.argsort(r)
        r, e, ref = r[order], p["energy"][order], p["reference"][order]
        out[row["variant"]] = {
            "inside_cutoff": errors(e, ref, r <= 5.0),
            "beyond_cutoff": errors(e, ref, r > 5.0),
            "beyond_6A": errors(e, ref, r > 6.0),
            "below_1.5A": errors(e, ref, r < 1.5),
        }
        ax.plot(r, e, lw=1.2, label=f"{row['variant']}")
        ax2.plot(r, 1e3 * (e - ref), lw=1.0, label=row["variant"])
        lim = max(lim, float(np.max(np.abs(1e3 * (e - ref)[r > 1.5]))))
        if row is rows[0]:
            ax.plot(r, ref, "k--", lw=0.8, label="reference")
    for a in (ax, ax2):
        a.axvline(5.0, color="grey", ls=":", lw=1)
    ax.set_ylabel("energy (dataset units, eV)")
    ax.legend()
    ax.set_title("H-He pair: test structures; dotted: the 5 Å cutoff")
    ax2.set_ylabel("error (meV)")
    ax2.set_xlabel("distance (Å)")
    ax2.set_ylim(-1.1 * lim, 1.1 * lim)  # the steep wall below 1.5 Å may leave the scale
    fig.tight_layout()
    fig.savefig(plot, dpi=110)
    plt.close(fig)
    out["plot"] = str(plot.relative_to(ROOT) if plot.is_relative_to(ROOT) else plot)
    return out


def sn2_analysis(rows: list[dict], workdir: Path, plot: Path) -> dict:
    """Errors where F or I is beyond the cutoff from C, and the plot along the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = np.load(PHASES["sn2"]["path"])
    z = list(raw["atomic_numbers"][0])
    R = raw["positions"]
    d_fc = np.linalg.norm(R[:, z.index(9)] - R[:, z.index(6)], axis=1)
    d_ci = np.linalg.norm(R[:, z.index(53)] - R[:, z.index(6)], axis=1)
    rc = raw["reaction_coordinate"]
    out = {}
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for row in rows:
        cutoff = 10.0 if row["variant"] == "local_cutoff10" else 5.0
        p = np.load(workdir / f"sn2_{row['variant']}" / "predictions.npz")
        i = p["test_index"]
        order = np.argsort(rc[i])
        i, e, ref = i[order], p["energy"][order], p["reference"][order]
        far = (d_fc[i] > cutoff) | (d_ci[i] > cutoff)
        out[row["variant"]] = {"separated_beyond_cutoff": errors(e, ref, far),
                               "within_cutoff": errors(e, ref, ~far),
                               "F_far": errors(e, ref, d_fc[i] > cutoff),
                               "I_far": errors(e, ref, d_ci[i] > cutoff)}
        ax.plot(rc[i], e, ".-", ms=3, lw=0.8, label=row["variant"])
        ax2.plot(rc[i], 1e3 * (e - ref), ".-", ms=3, lw=0.8, label=row["variant"])
        if row is rows[0]:
            ax.plot(rc[i], ref, "k--", lw=0.8, label="reference")
    ax.set_ylabel("energy (eV)")
    ax.legend()
    ax.set_title("F- + CH3I -> FCH3 + I-: test structures")
    ax2.set_ylabel("error (meV)")
    ax2.set_xlabel("reaction coordinate")
    fig.tight_layout()
    fig.savefig(plot, dpi=110)
    plt.close(fig)
    out["plot"] = str(plot.relative_to(ROOT) if plot.is_relative_to(ROOT) else plot)
    return out


# ---------------------------------------------------------------------------------------------
# Cost

SPACING = 4.6  # Å between ethanol centres: 9 atoms / 4.6^3 Å^3 = 0.092 atoms/Å^3 (liquid ethanol)
SIZES = (11, 111, 333, 1111, 11111)  # molecules: 99, 999, 2997, 9999, 99999 atoms
COST_EFA_MAX_FREQUENCY = 0.6  # the package default


def cluster(n_molecules: int):
    """Ethanol molecules in random orientations on a cubic grid, filled row by row (as
    long_range.py's timing cluster, at liquid density); open boundaries."""
    from ase.build import molecule

    side = int(np.ceil(n_molecules ** (1 / 3)))
    rng = np.random.default_rng(0)
    base = molecule("CH3CH2OH")
    base.positions -= base.positions.mean(axis=0)
    pos, numbers = [], []
    for k in range(n_molecules):
        m = base.copy()
        m.rotate(rng.uniform(0, 360), rng.normal(size=3))
        m.translate(SPACING * np.array(np.unravel_index(k, (side, side, side)), float))
        pos.append(m.positions)
        numbers.append(m.numbers)
    from ase import Atoms

    atoms = Atoms(np.concatenate(numbers), np.concatenate(pos))
    atoms.info["charge"] = 0.0
    return atoms


def cost_model(atoms, variant: str):
    """(model, overrides) of a cost variant for ``atoms``: an untrained model of the default
    size; EFA with max_extent covering the cluster and, for ``efa_fixed_grid``, the degree of
    the smallest cluster."""
    from so3krates.batching import single_graph
    from so3krates.config import load_config
    from so3krates.model.efa import choose_degree, structure_extent
    from so3krates.model_io import Model, build_module, init_params

    extent = structure_extent(atoms.positions)
    overrides = []
    if variant != "local":
        max_extent = float(np.ceil(extent + 1.0))
        overrides = ["model.efa.enabled=true", f"model.efa.max_extent={max_extent}",
                     f"model.efa.max_frequency={COST_EFA_MAX_FREQUENCY}"]
        if variant == "efa_fixed_grid":  # the grid of the smallest cluster
            small = structure_extent(cluster(SIZES[0]).positions)
            overrides.append("model.efa.degree="
                             f"{choose_degree(COST_EFA_MAX_FREQUENCY * np.ceil(small + 1.0))}")
    cfg = load_config(None, overrides).model
    one = cluster(1)  # parameters do not depend on the size: initialise on one molecule
    graph, _ = single_graph(one.numbers, one.positions, np.zeros((3, 3)), one.pbc, cfg.cutoff)
    params = init_params(build_module(cfg), graph, 0)
    model = Model(Path("."), cfg, params, {1: 0.0, 6: 0.0, 8: 0.0}, 1.0, "float32")
    return model, overrides


def cost_one(n_molecules: int, variant: str, repeats: int) -> dict:
    """One size and variant in this process: compile, then time ``repeats`` energy+forces
    calls through the calculator (positions jittered by 1e-4 Å before each)."""
    from so3krates.model.efa import lebedev_grid, structure_extent
    from so3krates.model_io import efa_settings

    atoms = cluster(n_molecules)
    extent = structure_extent(atoms.positions)
    model, overrides = cost_model(atoms, variant)
    cfg = model.config
    atoms.calc = model.calculator()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    atoms.get_forces()
    first_s = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        atoms.positions += 1e-4
        t = time.perf_counter()
        atoms.get_forces()
        times.append(time.perf_counter() - t)
    degree = efa_settings(cfg).get("efa_degree")
    return {"n_atoms": len(atoms), "variant": variant, "extent_A": extent,
            "efa_degree": degree,
            "efa_directions": None if degree is None else int(lebedev_grid(degree)[1].size),
            "overrides": overrides, "first_call_s": first_s, "repeats": repeats,
            "median_ms": 1e3 * float(np.median(times)), "min_ms": 1e3 * float(np.min(times)),
            "maxrss_before_first_call_MB": rss0 / 1024,
            "maxrss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "load_avg": os.getloadavg()}


def cost_interleaved(n_molecules: int, variants: list[str], repeats: int) -> dict:
    """The variants of one size in one process, their calls interleaved (a round calls each
    once), so that all see the same load from other processes; median and minimum per
    variant."""
    calcs = {}
    for v in variants:
        atoms = cluster(n_molecules)
        atoms.calc = cost_model(atoms, v)[0].calculator()
        atoms.get_forces()  # compile
        calcs[v] = atoms
    times = {v: [] for v in variants}
    for _ in range(repeats):
        for v, atoms in calcs.items():
            atoms.positions += 1e-4
            t = time.perf_counter()
            atoms.get_forces()
            times[v].append(time.perf_counter() - t)
    out = {"n_atoms": 9 * n_molecules, "repeats": repeats, "load_avg": os.getloadavg()}
    for v, ts in times.items():
        out[f"{v}_median_ms"] = 1e3 * float(np.median(ts))
        out[f"{v}_min_ms"] = 1e3 * float(np.min(ts))
    for v in variants:
        if v != "local":
            for k in ("median", "min"):
                out[f"{v}_part_{k}_ms"] = out[f"{v}_{k}_ms"] - out[f"local_{k}_ms"]
    out["maxrss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_interleaved(sizes, variants, repeats: int, timeout_s: float) -> dict:
    """:func:`cost_interleaved` per size (one process each) and the log-log slopes of the
    interleaved times and EFA parts; a size that fails or runs past ``timeout_s`` ends the
    series."""
    rows = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--phase", "cost-interleaved", "--one",
               f"{n}:{'+'.join(variants)}", "--repeats", str(repeats)]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"interleaved {n}: over {timeout_s:.0f} s", file=sys.stderr, flush=True)
            break
        if proc.returncode != 0:
            print(f"interleaved {n}: exit {proc.returncode}", file=sys.stderr, flush=True)
            break
        rows.append(json.loads(proc.stdout.decode().strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    fits = {}
    for key in [k for k in (rows[0] if rows else {}) if k.endswith("_ms")]:
        for label, lo in (("all", 0), ("from_1k", 900)):
            sel = [r for r in rows if r["n_atoms"] >= lo]
            fits[f"{key[:-3]}_{label}"] = fit([r["n_atoms"] for r in sel], [r[key] for r in sel])
    return {"variants": variants, "rows": rows, "slopes": fits}


def grid_size(n_molecules: int, variant: str) -> int:
    """Lebedev directions M of a cost variant at a size (1 for the local model)."""
    from so3krates.model.efa import choose_degree, lebedev_grid, structure_extent

    if variant == "local":
        return 1
    n = SIZES[0] if variant == "efa_fixed_grid" else n_molecules
    extent = np.ceil(structure_extent(cluster(n).positions) + 1.0)
    return int(lebedev_grid(choose_degree(COST_EFA_MAX_FREQUENCY * extent))[1].size)


def run_cost(sizes, variants, timeout_s: float, max_memory_gb: float, cache: Path) -> dict:
    """One process per size and variant (sizes ascending, the local model first). A size is
    skipped, ending that variant's series, when it fails, runs past ``timeout_s``, or when
    its peak RSS or its run time (compilation + repeats), extrapolated from the variant's
    previous size, would pass ``max_memory_gb`` or ``timeout_s``: the local model's growth
    above its RSS before the first call scaled by N, an EFA variant's excess over the local
    model (RSS and time) scaled by N x M. Each measurement is kept in ``cache``
    (``<molecules>_<variant>.json``) and reused by a later run."""
    rows, skipped = [], []
    done = set()

    def local_at(n_atoms):
        return next((r for r in rows if r["variant"] == "local" and r["n_atoms"] == n_atoms),
                    None)

    for n in sizes:
        for v in variants:
            if v in done:
                continue
            repeats = 5 if 9 * n < 2000 else 3 if 9 * n < 50000 else 2
            prev = [r for r in rows if r["variant"] == v]
            if prev:
                last = prev[-1]
                n_last = last["n_atoms"] // 9
                ratio = n / n_last
                if v == "local":
                    mem = last["maxrss_before_first_call_MB"] + ratio * (
                        last["maxrss_MB"] - last["maxrss_before_first_call_MB"])
                    call_s = ratio * last["median_ms"] / 1e3
                else:
                    ratio *= grid_size(n, v) / grid_size(n_last, v)
                    base_last, base_now = local_at(last["n_atoms"]), local_at(9 * n)
                    if base_last is None or base_now is None:
                        mem, call_s = math.inf, math.inf  # no local reference: not estimated
                    else:
                        mem = base_now["maxrss_MB"] + ratio * max(
                            0.0, last["maxrss_MB"] - base_last["maxrss_MB"])
                        call_s = (base_now["median_ms"] + ratio * max(
                            0.0, last["median_ms"] - base_last["median_ms"])) / 1e3
                why = None
                if mem / 1024 > max_memory_gb:
                    why = f"estimated peak RSS {mem / 1024:.0f} GB > {max_memory_gb:g} GB"
                elif (repeats + 2) * call_s > timeout_s:
                    why = (f"estimated {call_s:.0f} s per call, {(repeats + 2) * call_s:.0f} s "
                           f"with compilation and {repeats} repeats > {timeout_s:.0f} s")
                if why:
                    why += f" (M = {grid_size(n, v)} directions)" if v != "local" else ""
                    skipped.append({"molecules": n, "n_atoms": 9 * n, "variant": v,
                                    "why": why})
                    print(f"cost {n}:{v} skipped ({why})", file=sys.stderr, flush=True)
                    done.add(v)
                    continue
            cached = cache / f"{n}_{v}.json"
            if cached.exists():
                rows.append(json.loads(cached.read_text()))
                print(f"cost {n}:{v}: reusing {cached}", file=sys.stderr, flush=True)
                continue
            cmd = [sys.executable, __file__, "--phase", "cost-one", "--one", f"{n}:{v}",
                   "--repeats", str(repeats)]
            t0 = time.time()
            try:
                proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s)
                ok = proc.returncode == 0
                why = f"exit {proc.returncode}: {proc.stderr.decode()[-400:]}"
            except subprocess.TimeoutExpired:
                ok, why = False, f"over {timeout_s:.0f} s"
            if ok:
                row = json.loads(proc.stdout.decode().strip().splitlines()[-1])
                row["process_wall_s"] = time.time() - t0
                rows.append(row)
                cache.mkdir(parents=True, exist_ok=True)
                cached.write_text(json.dumps(row))
                print(json.dumps(row), file=sys.stderr, flush=True)
            else:
                skipped.append({"molecules": n, "n_atoms": 9 * n, "variant": v, "why": why})
                print(f"cost {n}:{v} skipped ({why})", file=sys.stderr, flush=True)
                done.add(v)
    return {"rows": rows, "skipped": skipped, "slopes": slopes(rows),
            "slopes_of_min": slopes(rows, "min_ms")}


def fit(n, t) -> float | None:
    n, t = np.asarray(n, float), np.asarray(t, float)
    ok = t > 0
    if ok.sum() < 2:
        return None
    return float(np.polyfit(np.log(n[ok]), np.log(t[ok]), 1)[0])


def slopes(rows: list[dict], key: str = "median_ms") -> dict:
    """Log-log slopes of the time (``key``: median or minimum of the repeats) against N: local,
    each EFA variant in total and its part (EFA minus local, sizes where both ran); over all
    sizes and over N >= 1000."""
    by = {}
    for r in rows:
        by.setdefault(r["variant"], {})[r["n_atoms"]] = r[key]
    local = by.get("local", {})
    out = {}
    for v, series in by.items():
        for label, lo in (("all", 0), ("from_1k", 900)):
            ns = sorted(n for n in series if n >= lo)
            out[f"{v}_{label}"] = fit(ns, [series[n] for n in ns])
            if v != "local":
                ns = [n for n in ns if n in local]
                part = [series[n] - local[n] for n in ns]
                out[f"{v}_part_{label}"] = fit(ns, part)
                out[f"{v}_part_ms"] = {n: series[n] - local[n] for n in sorted(series)
                                       if n in local}
    return out


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core"):
                info[key.strip()] = value.strip()
    except OSError:
        pass
    import jax

    info["jax"] = jax.__version__
    info["backend"] = jax.default_backend()
    info["memory_GB"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--phase", default="all",
                   choices=["cumulene", "two_atoms", "sn2", "cost", "all", "one", "cost-one",
                            "cost-interleaved"])
    p.add_argument("--variants", default=None,
                   help="training variants (default local,efa; sn2 also local_cutoff10)")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="multiply each phase's step budget (quick checks)")
    p.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)  # worker
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--set", action="append", default=[],
                   help="extra key=value override for every training run (both variants)")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)),
                   help="cost: cluster sizes in ethanol molecules")
    p.add_argument("--cost-variants", default="local,efa,efa_fixed_grid")
    p.add_argument("--interleaved-sizes", default="11,111,333,1111",
                   help="cost: sizes (molecules) of the interleaved local vs fixed-grid pass")
    p.add_argument("--cost-timeout", type=float, default=600.0,
                   help="cost: seconds per size and variant before it is given up")
    p.add_argument("--max-memory-gb", type=float, default=12.0,
                   help="cost: skip a size whose extrapolated peak RSS is above this")
    p.add_argument("--repeats", type=int, default=5, help=argparse.SUPPRESS)  # worker
    p.add_argument("--workdir", default="runs/efa")
    p.add_argument("--machine-tag", default="epyc")
    p.add_argument("--json", default=None)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # worker: phase:variant
    args = p.parse_args()
    workdir = Path(args.workdir)
    if args.phase == "one":
        phase, variant = args.one.split(":")
        print(json.dumps(train_and_test(phase, variant, args.steps, workdir, args.set)))
        return
    if args.phase == "cost-one":
        n, variant = args.one.split(":")
        print(json.dumps(cost_one(int(n), variant, args.repeats)))
        return
    if args.phase == "cost-interleaved":
        n, variants = args.one.split(":")
        print(json.dumps(cost_interleaved(int(n), variants.split("+"), args.repeats)))
        return

    date = datetime.date.today().isoformat()
    tag = f"{args.machine_tag}_{date}"
    path = Path(args.json or RESULTS / f"efa_{tag}.json")
    results = json.loads(path.read_text()) if path.exists() else {}
    phases = ["cumulene", "two_atoms", "sn2", "cost"] if args.phase == "all" else [args.phase]
    for phase in phases:
        t0 = time.time()
        if phase == "cost":
            sizes = [int(s) for s in args.sizes.split(",")]
            entry = run_cost(sizes, args.cost_variants.split(","), args.cost_timeout,
                             args.max_memory_gb, workdir / "cost")
            entry["interleaved"] = run_interleaved(
                [int(s) for s in args.interleaved_sizes.split(",")],
                ["local", "efa_fixed_grid"], 5, args.cost_timeout)
            entry.update(model="package defaults (F = 128, 3 blocks, degrees 1-4, 5 Å), "
                         "random init, float32, calculator", spacing_A=SPACING,
                         efa_max_frequency=COST_EFA_MAX_FREQUENCY)
        else:
            variants = (args.variants.split(",") if args.variants
                        else ["local", "efa", "local_cutoff10"] if phase == "sn2"
                        else list(VARIANTS))
            steps = max(1, int(round(PHASES[phase]["steps"] * args.steps_scale)))
            rows = run_training(phase, variants, steps, workdir, args.parallel, args.set)
            entry = {"budget": f"{steps} steps, batch 2, both variants", "runs": rows}
            if phase == "two_atoms" and rows:
                entry["by_distance"] = two_atoms_analysis(
                    rows, workdir, RESULTS / f"efa_two_atoms_{tag}.png")
            if phase == "sn2" and rows:
                entry["by_region"] = sn2_analysis(rows, workdir, RESULTS / f"efa_sn2_{tag}.png")
        entry["phase_wall_s"] = time.time() - t0
        entry["load_avg_end"] = os.getloadavg()
        results[phase] = entry
        results.update(machine=machine(), date=date, training_model=MODEL,
                       command=" ".join([Path(sys.executable).name, *sys.argv]))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        print(json.dumps({phase: entry}, indent=1), flush=True)


if __name__ == "__main__":
    main()
