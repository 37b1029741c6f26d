"""The demo: train on the shipped GFN2-xTB ethanol data, evaluate, and run a short MD."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def run_md(model, atoms, steps: int, temperature_K: float, timestep_fs: float, trajectory: Path):
    """Langevin MD through the ASE calculator; returns (temperatures, total energies)."""
    from ase import units
    from ase.constraints import FixCom
    from ase.io import Trajectory
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = atoms.copy()
    atoms.calc = model.calculator()
    atoms.set_constraint(FixCom())
    # With FixCom set, the momenta are set with the centre-of-mass momentum removed.
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(0))
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K, friction=0.01 / units.fs,
                   fixcm=False, rng=np.random.default_rng(1))
    temps, etot = [], []
    with Trajectory(str(trajectory), "w", atoms) as traj:
        def log():
            temps.append(atoms.get_temperature())
            etot.append(atoms.get_total_energy())
        dyn.attach(log, interval=10)
        dyn.attach(traj.write, interval=10)
        dyn.run(steps)
    return np.array(temps), np.array(etot)


def run_demo(output: Path, max_time_minutes: float = 6.0, console=None) -> None:
    """Train (budgeted), evaluate on the held-out test split, run 2,000 MD steps (1 ps)."""
    from rich.console import Console

    from so3krates.cli import evaluate_dir
    from so3krates.config import load_config
    from so3krates.datasets import shipped_dataset_path
    from so3krates.model_io import load_model
    from so3krates.training.trainer import train

    console = console or Console()
    data_path = shipped_dataset_path()
    console.rule("1. train on the shipped dataset")
    config = load_config(None, [
        f"data.path={data_path}", "data.n_train=600", "data.n_valid=50",
        "model.features=64", "model.num_layers=2",
        f"training.max_time_minutes={max_time_minutes}", "training.valid_every=240",
        "training.decay_rate=0.03",  # over the steps that fit the budget (decay_steps: budget)
    ])
    model_dir = output / "model"
    train(config, model_dir, console=console)

    console.rule("2. evaluate on the test split")
    metrics = evaluate_dir(str(model_dir), None, "test", [], json_out=str(output / "test_metrics.json"))

    console.rule("3. molecular dynamics through the ASE calculator")
    from so3krates.data import read_dataset

    data = read_dataset(data_path)
    model = load_model(model_dir)
    temps, etot = run_md(model, data.to_atoms(0), steps=2000, temperature_K=300.0, timestep_fs=0.5,
                         trajectory=output / "md.traj")
    console.print(
        f"MD: 2000 steps of 0.5 fs at 300 K (Langevin); mean T = {temps[len(temps) // 2:].mean():.0f} K, "
        f"total-energy range {np.ptp(etot) * 1e3:.0f} meV"
    )
    console.rule("done")
    console.print(
        f"model:   {model_dir}\n"
        f"metrics: {output / 'test_metrics.json'} (test forces MAE {metrics['forces_mae'] * 1e3:.1f} meV/Å, "
        f"energy MAE {metrics['energy_mae'] * 1e3:.1f} meV)\n"
        f"plots:   {model_dir / 'plots'} and {output / 'test_metrics.png'}\n"
        f"MD:      {output / 'md.traj'}"
    )
