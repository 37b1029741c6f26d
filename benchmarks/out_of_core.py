"""Training on datasets larger than memory: peak memory and time of streaming training from
an HDF5 dataset file (``so3krates convert``) of 10^4, 10^5 and 10^6 structures.

The data are generated, never committed: small random molecules (4-12 atoms of H, C, N, O
on a jittered grid, no two atoms closer than 1.1 Å) labelled with a Lennard-Jones sum
(analytic energies and forces), written chunk by chunk straight into the HDF5 format with
pair counts within the model's cutoff (what ``so3krates convert --cutoff`` stores), so that
generation itself runs in bounded memory. Each size then trains a tiny model in a fresh
process for ``--steps`` steps (an epoch of 10^6 structures is too long here: times are per
step, and per epoch extrapolated from them), recording:

- the start-up: the streaming pass over the training set (reference energies, force scale,
  checks) and the batches' ladder from the stored counts, its time and the RSS after it;
- the loader alone (batches read, neighbour lists computed and packed, no model): ms/batch;
- training: per step (the first use of each batch shape, which compiles, left out), the
  median time the loop waited for its next batch and the median compute time of a step,
  each step timed to completion; and the process's peak RSS (``ru_maxrss``) over
  everything, start-up and compilation included.

``--model default`` trains the package's default model instead of the tiny one (the
loader's share of a step then shrinks). ``--in-memory`` adds, for the sizes up to 10^5, the same training from the file loaded into
memory (``GraphDataset``, what every other format uses) for comparison. The file is read
through the OS page cache: with more RAM than the file (here) reads after the first come
from memory, so these times are not those of a cold disk. Run from the repository root::

    .venv/bin/python benchmarks/out_of_core.py --sizes 10000 100000 1000000 --in-memory

Writes ``benchmarks/results/out_of_core_<machine>_<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ELEMENTS = np.array([1, 6, 7, 8])
SIGMA, EPSILON = 1.2, 0.05  # Å, eV: the Lennard-Jones labels
CUTOFF = 5.0
MODELS = {  # "tiny": the loader's cost shows; "default": the package's model (features 128, 3 layers)
    "tiny": ["model.features=16", "model.num_layers=1", "model.num_radial=8",
             "model.degrees=[1,2]", f"model.cutoff={CUTOFF}"],
    "default": [f"model.cutoff={CUTOFF}"],
}
N_VALID = 200


def rss_mb() -> float:
    """This process's resident memory now (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def molecules(rng: np.random.Generator, count: int, n_atoms: int):
    """``count`` random molecules of ``n_atoms`` atoms: numbers (count, n), positions
    (count, n, 3) Å on a jittered 4x4x4 grid of 1.5 Å, Lennard-Jones energies (count,) eV and
    forces (count, n, 3) eV/Å."""
    grid = np.stack(np.meshgrid(*[np.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3) * 1.5
    pick = np.argsort(rng.random((count, len(grid))), axis=1)[:, :n_atoms]
    r = grid[pick] + rng.uniform(-0.2, 0.2, size=(count, n_atoms, 3))
    numbers = rng.choice(ELEMENTS, size=(count, n_atoms))
    d = r[:, :, None, :] - r[:, None, :, :]  # r_i - r_j
    dist = np.linalg.norm(d, axis=-1) + np.eye(n_atoms) * 1e6
    s6 = (SIGMA / dist) ** 6
    energy = 2 * EPSILON * np.sum(s6 * s6 - s6, axis=(1, 2))  # 4 eps over i < j
    # F_i = -dE/dr_i = sum_j 24 eps (2 s12 - s6) / r^2 (r_i - r_j)
    coef = 24 * EPSILON * (2 * s6 * s6 - s6) / dist**2
    forces = np.einsum("sij,sijk->sik", coef, d)
    return numbers, r, energy, forces


def generate(path: Path, n: int, seed: int = 0, chunk: int = 10_000) -> float:
    """Write ``n`` structures to the HDF5 dataset file ``path`` (atomically), ``chunk`` at a
    time; returns seconds."""
    import h5py

    from so3krates.data import Dataset
    from so3krates.data.hdf5 import HDF5Writer
    from so3krates.fileio import atomic_path

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        writer = HDF5Writer(h5, f"benchmarks/out_of_core.py synthetic seed {seed}",
                            cutoff=CUTOFF)
        for lo in range(0, n, chunk):
            m = min(chunk, n - lo)
            sizes = rng.integers(4, 13, size=m)
            zs, rs, es, fs = [None] * m, [None] * m, np.zeros(m), [None] * m
            for size in np.unique(sizes):
                where = np.flatnonzero(sizes == size)
                z, r, e, f = molecules(rng, len(where), int(size))
                es[where] = e
                for k, w in enumerate(where):
                    zs[w], rs[w], fs[w] = z[k], r[k], f[k]
            writer.append(Dataset(numbers=zs, positions=rs, cells=np.zeros((m, 3, 3)),
                                  pbc=np.zeros((m, 3), bool), energy=es, forces=fs))
            print(f"  {lo + m}/{n} structures, {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)
        writer.finish()
    return time.perf_counter() - t0


def config(path: Path, n: int, steps: int, batch_size: int, model: str = "tiny"):
    from so3krates.config import load_config

    return load_config(None, [
        f"data.path={path}", f"data.n_train={n - N_VALID}", f"data.n_valid={N_VALID}",
        "data.n_test=0", *MODELS[model], f"training.batch_size={batch_size}",
        f"training.max_steps={steps}", f"training.valid_every={steps // 2}",
        "training.decay_steps=100000", "training.progress=false"])


def worker(path: Path, n: int, steps: int, batch_size: int, in_memory: bool,
           model: str = "tiny") -> dict:
    """One size in this (fresh) process: start-up, loader and training; see the docstring."""
    from so3krates.data.hdf5 import HDF5Dataset
    from so3krates.data.split import make_split
    from so3krates.terms.physical import PhysicalTerms
    from so3krates.training.data import training_graphs, training_sets
    from so3krates.training.trainer import _epoch_order, train

    out = {"n_structures": n, "mode": "in_memory" if in_memory else "streaming", "model": model,
           "batch_size": batch_size, "steps": steps, "rss_after_imports_mb": rss_mb()}
    cfg = config(path, n, steps, batch_size, model)
    data = HDF5Dataset(path)
    t0 = time.perf_counter()
    if in_memory:
        data = data.load()
    split = make_split(n, n - N_VALID, N_VALID, 0, 0)
    terms = PhysicalTerms.from_config(cfg.model)
    train_set, _, _ = training_sets(data, split, terms, cfg.model)
    graphs = training_graphs(train_set, cfg.model, cfg.training, terms.graph_options())
    out.update(startup_s=time.perf_counter() - t0, rss_after_startup_mb=rss_mb(),
               ladder=[list(c) for c in graphs.ladder])
    order = _epoch_order(0, 0, len(train_set))
    t0, k = time.perf_counter(), 0
    for k, _ in enumerate(graphs.batches(order), 1):
        if k == 200:
            break
    out["loader_ms_per_batch"] = 1e3 * (time.perf_counter() - t0) / k
    del graphs, train_set, data
    steps_timed = timed_steps()
    with tempfile.TemporaryDirectory() as run:
        t0 = time.perf_counter()
        if in_memory:
            from so3krates.training.trainer import load_training_data

            loaded = load_training_data(cfg).load()
            result = train(cfg, run, data=loaded, console="stderr")
        else:
            result = train(cfg, run, console="stderr")
        out["train_wall_s"] = time.perf_counter() - t0
    wait, step, capacity = (np.array(x) for x in zip(*steps_timed))
    seen = [c in capacity[:k] for k, c in enumerate(capacity)]  # not the compiling first call
    keep = np.array(seen) & (np.arange(len(step)) > 0)
    per_step = np.median((wait + step)[keep])
    out.update(steps_done=result.steps, steps_timed=int(keep.sum()),
               ms_wait_for_batch=1e3 * float(np.median(wait[keep])),
               ms_step_compute=1e3 * float(np.median(step[keep])),
               ms_per_step=1e3 * float(per_step),
               epoch_steps=-(-(n - N_VALID) // batch_size),
               epoch_minutes_extrapolated=float(per_step) * -(-(n - N_VALID) // batch_size) / 60,
               peak_rss_mb=peak_rss_mb(), rss_at_end_mb=rss_mb())
    return out


def timed_steps() -> list[tuple[float, float, int]]:
    """Make the trainer's steps record ``(wait, compute, atoms capacity)`` in seconds: the time
    the loop took since the previous step returned (getting the next batch) and the step's time
    until its loss is computed. Blocking on each step's result serialises the device with the
    loop; the prefetch thread still works meanwhile."""
    import jax

    import so3krates.training.trainer as trainer

    record: list[tuple[float, float, int]] = []
    make = trainer.make_train_step

    def make_timed(*args, **kwargs):
        step = make(*args, **kwargs)
        last = [None]

        def timed(params, opt_state, ema, graph, labels):
            t0 = time.perf_counter()
            result = step(params, opt_state, ema, graph, labels)
            jax.block_until_ready(result[3])
            t1 = time.perf_counter()
            record.append((t0 - (last[0] or t0), t1 - t0, graph.positions.shape[0]))
            last[0] = t1
            return result

        return timed

    trainer.make_train_step = make_timed
    return record


def machine() -> dict:
    import platform

    info = {"os": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            info["cpu_model"] = line.split(":", 1)[1].strip()
            break
    info["loadavg_at_start"] = os.getloadavg()
    import jax

    info.update(jax=jax.__version__, device_kind=jax.devices()[0].device_kind,
                platform=jax.devices()[0].platform)
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--steps", type=int, default=400, help="training steps per size")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--model", choices=list(MODELS), default="tiny")
    p.add_argument("--in-memory", action="store_true",
                   help="also train from the file loaded into memory (sizes <= 10^5)")
    p.add_argument("--workdir", default="/tmp/so3krates_out_of_core",
                   help="where the generated files go (kept for reruns; not committed)")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    workdir = Path(args.workdir)
    if args.worker:
        n, mode = int(args.worker[0]), args.worker[1]
        print(json.dumps(worker(workdir / f"synthetic_{n}.h5", n, args.steps, args.batch_size,
                                mode == "in_memory", args.model)))
        return
    date = datetime.date.today().isoformat()
    path = Path(args.json or ROOT / "benchmarks" / "results" / f"out_of_core_epyc_{date}.json")
    results = json.loads(path.read_text()) if path.exists() else {"runs": [], "generated": {}}
    results.update(models=MODELS, cutoff=CUTOFF, n_valid=N_VALID)
    results.setdefault("commands", []).append({"command": " ".join(sys.argv),
                                               "machine": machine()})
    workdir.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        file = workdir / f"synthetic_{n}.h5"
        sidecar = file.with_suffix(".json")  # how the file was generated
        if not file.exists():
            print(f"generating {n} structures -> {file}", file=sys.stderr)
            seconds = generate(file, n)
            sidecar.write_text(json.dumps({
                "seconds": seconds, "bytes": file.stat().st_size,
                "peak_rss_mb_of_generating_process": peak_rss_mb()}))
        if sidecar.exists():
            results["generated"][str(n)] = json.loads(sidecar.read_text())
        modes = ["streaming"] + (["in_memory"] if args.in_memory and n <= 100_000 else [])
        for mode in modes:
            print(f"training {mode} on {n} structures", file=sys.stderr)
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", str(n), mode, "--steps", str(args.steps),
                 "--batch-size", str(args.batch_size), "--workdir", str(workdir),
                 "--model", args.model],
                stdout=subprocess.PIPE, text=True)
            if proc.returncode:
                raise SystemExit(f"worker {n} {mode} failed ({proc.returncode})")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["loadavg_after"] = os.getloadavg()
            key = (n, mode, args.model)
            results["runs"] = [r for r in results["runs"] if (
                r["n_structures"], r["mode"], r.get("model", "tiny")) != key] + [row]
            print(json.dumps(row), file=sys.stderr)
            path.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
