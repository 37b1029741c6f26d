"""Command line: ``so3krates train | evaluate | convert | demo | md | relax | explore | analyze``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from so3krates.config import TRAINING_PRESETS
from so3krates.md import cli as md_cli

console = Console(soft_wrap=True)  # messages with long paths stay on one line (greppable logs)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train an SO3krates model on your data")
    p.add_argument("config", nargs="?", help="YAML config (default: the package defaults)")
    p.add_argument("--data", help="dataset path (.npz, extxyz, any ASE format; .h5: a file of "
                                  "so3krates convert, read from disk per batch)")
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-valid", type=int)
    p.add_argument("--max-time", type=float, metavar="MINUTES", help="wall-clock budget")
    p.add_argument("--output", default="runs/model", help="model directory (default runs/model)")
    p.add_argument("--devices", type=int, metavar="N",
                   help="split every batch over N devices: GPUs, or on a CPU N cores as JAX CPU "
                        "devices (training.devices; in a multi-host run: all hosts' devices)")
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="multi-host training: the address of host 0 (jax.distributed; with "
                        "--hosts and --host-id; 'auto' lets JAX detect SLURM/MPI)")
    p.add_argument("--hosts", type=int, metavar="N", help="multi-host training: number of hosts")
    p.add_argument("--host-id", type=int, metavar="I", help="multi-host training: this host, 0..N-1")
    p.add_argument("--preset", choices=list(TRAINING_PRESETS),
                   help="a named training recipe (training.preset; settings given with --set "
                        "or in the YAML file win): huber = lowest errors with long budgets, "
                        "check MD stability; legacy = the former defaults")
    p.add_argument("--init-from", metavar="MODEL_DIR",
                   help="fine-tune: start from this trained model directory's architecture and "
                        "parameters (training.init_from; see docs/fine-tuning.md)")
    p.add_argument("--freeze", metavar="STRATEGY",
                   help="fine-tuning: parameters kept fixed (training.freeze): none, embedding, "
                        "blocks:K, all_but_readout")
    p.add_argument("--ensemble", type=int, metavar="N",
                   help="train a committee of N models (seeds seed, seed+1, ...; one data split) "
                        "into OUTPUT/members/K and write OUTPUT as an ensemble directory; "
                        "--max-time is each member's budget (see docs/uncertainty.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set model.features=64")


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="errors of a trained model on a dataset")
    p.add_argument("model_dir")
    p.add_argument("data", nargs="?", help="dataset (default: the model's training data)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test", "all"])
    p.add_argument("--json", help="write the metrics as JSON here")
    p.add_argument("--dtype", choices=["float32", "float64"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="data reading options, e.g. --set data.energy_key=REF_energy")


def _convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="write a dataset as an indexed HDF5 file, for training on "
                                       "data larger than memory")
    p.add_argument("data", help="dataset to read (.npz, extxyz, any ASE format)")
    p.add_argument("output", help="HDF5 file to write (.h5 or .hdf5)")
    p.add_argument("--cutoff", type=float, metavar="ANGSTROM",
                   help="also store each structure's pair count within this cutoff (the "
                        "model's model.cutoff, default 5): training then starts without a "
                        "counting pass over the data")
    p.add_argument("--chunk-size", type=int, default=1000, metavar="N",
                   help="structures read and written at a time (bounds the memory; default 1000)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="data reading options as for train, e.g. --set data.energy_key=REF_energy")


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="train on the shipped dataset, evaluate, run a short MD")
    p.add_argument("--output", default="demo_output")
    p.add_argument("--max-time", type=float, default=6.0, metavar="MINUTES")


def cmd_train(args) -> int:
    from so3krates.training.trainer import train

    overrides = list(args.set)
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.n_train:
        overrides.append(f"data.n_train={args.n_train}")
    if args.n_valid:
        overrides.append(f"data.n_valid={args.n_valid}")
    if args.max_time:
        overrides.append(f"training.max_time_minutes={args.max_time}")
    if args.devices:
        overrides.append(f"training.devices={args.devices}")
    if args.preset:
        overrides.append(f"training.preset={args.preset}")
    if args.init_from:
        overrides.append(f"training.init_from={json.dumps(args.init_from)}")
    if args.freeze:
        overrides.append(f"training.freeze={args.freeze}")
    config = load_config_file(args.config, overrides)
    start_devices(config.training.devices, args.coordinator, args.hosts, args.host_id)
    if args.ensemble is not None:
        return train_ensemble(args, overrides, config.training.seed)
    result = train(config, args.output, console=console)
    console.print(f"model directory: [bold]{result.output}[/bold]")
    return 0


def train_ensemble(args, overrides: list[str], seed: int) -> int:
    """``train --ensemble N``: N members that differ only in their seed (initialisation and
    batch order; the data split is the same), each an ordinary run directory (a killed run
    resumes member by member), then the ensemble file. The ensemble directory gets the first
    member's training config and split, so that ``evaluate`` finds the data and the test set."""
    import shutil

    from so3krates.data.split import SPLIT_FILE
    from so3krates.ensemble import write_ensemble
    from so3krates.training.trainer import CONFIG_FILE, train

    if args.ensemble < 2:
        raise ValueError(f"--ensemble needs at least 2 members, got {args.ensemble}")
    output = Path(args.output)
    members = []
    for k in range(args.ensemble):
        config = load_config_file(args.config, overrides + [f"training.seed={seed + k}"])
        console.print(f"member {k + 1} of {args.ensemble} (seed {seed + k})")
        members.append(train(config, output / "members" / str(k), console=console).output)
    for name in (CONFIG_FILE, SPLIT_FILE):
        if (members[0] / name).exists():
            shutil.copyfile(members[0] / name, output / name)
    write_ensemble(output, members, extra={"training": {
        "seeds": [seed + k for k in range(args.ensemble)]}})
    console.print(f"ensemble directory: [bold]{output}[/bold] ({args.ensemble} members)")
    return 0


def start_devices(devices: int, coordinator: str | None, hosts: int | None,
                  host_id: int | None) -> None:
    """Before JAX starts: give each host's CPU backend its share of ``devices`` (used where JAX
    computes on the CPU; GPUs are what they are), and join a multi-host run if asked."""
    from so3krates.training.sharding import start_distributed, use_cpu_devices

    multi_host = bool(coordinator or hosts or host_id is not None)
    if multi_host and not (hosts and (coordinator == "auto" or coordinator and host_id is not None)):
        raise ValueError("multi-host training needs --coordinator HOST:PORT, --hosts N and "
                         "--host-id I (or --coordinator auto --hosts N on a SLURM/MPI cluster)")
    hosts = hosts or 1
    if devices % hosts:
        raise ValueError(f"training.devices={devices} does not split evenly over {hosts} hosts")
    use_cpu_devices(devices // hosts)
    if multi_host:
        if coordinator == "auto":
            start_distributed()
        else:
            start_distributed(coordinator, hosts, host_id)


def load_config_file(path: str | None, overrides: list[str]):
    """``load_config`` with a YAML syntax error reported as one line naming the file."""
    import yaml

    from so3krates.config import load_config

    try:
        return load_config(path, overrides)
    except yaml.YAMLError as err:
        where = "a --set value"  # values are parsed as YAML too: which text was it?
        if path is not None:
            try:
                yaml.safe_load(Path(path).read_text())
            except yaml.YAMLError:
                where = str(path)
        raise ValueError(f"{where}: not valid YAML ({' '.join(str(err).split())})") from None


def print_metrics(metrics: dict, title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, unit, scale in (
        ("energy_mae", "meV", 1e3), ("energy_rmse", "meV", 1e3),
        ("energy_mae_per_atom", "meV/atom", 1e3), ("forces_mae", "meV/Å", 1e3),
        ("forces_rmse", "meV/Å", 1e3), ("energy_max_error", "meV", 1e3),
        ("forces_max_error", "meV/Å", 1e3), ("stress_mae_GPa", "GPa", 1.0),
        ("stress_rmse_GPa", "GPa", 1.0), ("stress_mae", "meV/Å³", 1e3),
        ("energy_uncertainty_mean", "meV", 1e3), ("forces_uncertainty_mean", "meV/Å", 1e3),
        ("energy_uncertainty_spearman", "rank correlation with |error|", 1.0),
        ("forces_uncertainty_spearman", "rank correlation with |error|", 1.0),
    ):
        if key in metrics:
            table.add_row(f"{key} ({unit})", f"{metrics[key] * scale:.3f}")
    table.add_row("n_structures", str(metrics["n_structures"]))
    console.print(table)


def evaluate_dir(model_dir: str, data_path: str | None, split: str, overrides: list[str],
                 dtype: str | None = None, batch_size: int = 16, json_out: str | None = None) -> dict:
    """Evaluate a model directory; returns the metrics (also printed and written)."""
    import numpy as np

    from so3krates.data import Dataset
    from so3krates.data.split import SPLIT_FILE, load_split
    from so3krates.evaluate import evaluate_model, load_for_evaluation
    from so3krates.training.plots import plot_parity
    from so3krates.training.trainer import CONFIG_FILE, load_training_data

    model_dir_p = Path(model_dir)
    model = load_for_evaluation(model_dir_p, dtype)  # a model or an ensemble directory
    cfg_path = model_dir_p / CONFIG_FILE
    config = load_config_file(cfg_path if cfg_path.exists() else None, overrides)
    if data_path:
        config.data.path = data_path
    data = load_training_data(config)
    label = split
    if split != "all":
        if (model_dir_p / SPLIT_FILE).exists():
            try:
                data = data.subset(load_split(model_dir_p, len(data))[split])
            except ValueError as err:
                console.print(f"[yellow]{err}; evaluating all {len(data)} structures[/yellow]")
                label = "all"
        else:
            console.print(f"[yellow]no split in {model_dir}; evaluating all structures[/yellow]")
            label = "all"
    if not isinstance(data, Dataset):  # an HDF5 dataset file: this split, in memory
        data = data.load()
    metrics, energy, forces, stress = evaluate_model(model, data, batch_size)
    metrics = {"model": str(model_dir_p), "data": str(config.data.path), "split": label, **metrics}
    print_metrics(metrics, f"{model_dir} on {config.data.path} ({label})")
    json_path = Path(json_out) if json_out else model_dir_p / f"evaluation_{label}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(metrics, indent=2))
    png = json_path.with_suffix(".png")
    plot_parity(data.energy, energy, np.concatenate(data.forces), np.concatenate(forces), png,
                title=f"{label} set", stress_ref=data.stress, stress_pred=stress)
    console.print(f"metrics: {json_path}\nparity plot: {png}")
    return metrics


def cmd_evaluate(args) -> int:
    evaluate_dir(args.model_dir, args.data, args.split, args.set, args.dtype, args.batch_size, args.json)
    return 0


def cmd_convert(args) -> int:
    import os
    import signal

    from so3krates.data.hdf5 import convert
    from so3krates.training.data import READING_OPTIONS

    other = [o for o in args.set if not o.strip().startswith("data.")]
    if other:
        raise ValueError(f"convert takes data.* reading options only, not {other[0]!r}")
    if args.chunk_size < 1:
        raise ValueError(f"--chunk-size must be >= 1, not {args.chunk_size}")
    d = load_config_file(None, list(args.set)).data
    options = {k: getattr(d, k) for k in (*READING_OPTIONS, "nan_labels", "format")}
    kill_after = int(os.environ.get("SO3KRATES_KILL_AFTER_CHUNK", "0"))  # fault injection (tests)
    chunks = 0

    def after_chunk(n_written: int) -> None:
        nonlocal chunks
        chunks += 1
        if kill_after and chunks == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    n = convert(args.data, args.output, options, args.chunk_size, args.cutoff, after_chunk)
    console.print(f"wrote {n} structures to [bold]{args.output}[/bold]"
                  + (f" (pair counts within {args.cutoff:g} Å)" if args.cutoff else ""))
    return 0


def cmd_demo(args) -> int:
    from so3krates.demo import run_demo

    run_demo(Path(args.output), max_time_minutes=args.max_time, console=console)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so3krates", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _evaluate_parser(sub)
    _convert_parser(sub)
    _demo_parser(sub)
    md_cli.add_parsers(sub)
    args = parser.parse_args(argv)
    from so3krates.compile import use_compilation_cache

    use_compilation_cache()  # the next command compiles the same model from disk
    handlers = {"train": cmd_train, "evaluate": cmd_evaluate, "convert": cmd_convert,
                "demo": cmd_demo}
    handlers.update({k: (lambda a, f=f: f(a, console)) for k, f in md_cli.HANDLERS.items()})
    from pydantic import ValidationError

    from so3krates.data import DataError
    from so3krates.model_io import ModelFileError, one_line

    try:
        return handlers[args.command](args)
    except ValidationError as err:  # pydantic's text spans several lines and a URL per problem
        return print_error(f"invalid configuration: {one_line(err)}", 2)
    except (DataError, ModelFileError, ValueError, FileNotFoundError) as err:
        return print_error(str(err), 2)
    except OSError as err:  # a full disk, no permission: the files written before are intact
        return print_error(str(err), 1)


def print_error(message: str, code: int) -> int:
    """Print ``error: message`` as one line (no markup read from it) and return ``code``."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/bold red] {escape(' '.join(message.split()))}")
    return code


if __name__ == "__main__":
    sys.exit(main())
