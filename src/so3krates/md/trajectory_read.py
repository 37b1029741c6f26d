"""Reading MD trajectories back (``.xyz``/``.extxyz``, ``.traj``, ``.h5``) as one
:class:`~so3krates.md.trajectory.Trajectory`; writing is in :mod:`so3krates.md.trajectory`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.data import atomic_masses

from so3krates.md.trajectory import H5_FORMAT, H5_SUFFIXES, Trajectory, momenta_to_velocities


def read_trajectory(path: str | os.PathLike) -> Trajectory:
    """Read a trajectory written by :class:`TrajectoryWriter`, or any ASE-readable one.

    Files from other programs may lack fields; those are ``None``. Velocities come from the
    ``velocities`` array (Å/fs) if present, else from ASE momenta. Time is read from the
    per-frame info ``time_fs`` (or ``time``, taken as fs). Cell and pbc are those of the first
    frame; atoms must be the same in every frame.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"trajectory {path} does not exist")
    if path.suffix.lower() in H5_SUFFIXES:
        return _read_h5(path)
    import ase.io

    try:
        images = ase.io.read(str(path), index=":")
    except StopIteration:  # ASE's reaction to some empty files
        images = []
    except Exception as err:  # ASE raises many kinds: name the file, not a parser's traceback
        raise ValueError(f"cannot read trajectory {path}: {type(err).__name__}: {err}") from None
    if not images:
        raise ValueError(f"trajectory {path} holds no frames")
    first = images[0]
    numbers = first.numbers.copy()
    for k, atoms in enumerate(images):
        if not np.array_equal(atoms.numbers, numbers):
            raise ValueError(f"{path}: frame {k} has different atoms than frame 0")
    masses = first.get_masses()
    positions = np.stack([a.positions for a in images])

    def stack(get):
        values = [get(a) for a in images]
        return None if any(v is None for v in values) else np.asarray(np.stack(values), float)

    velocities = stack(lambda a: a.arrays.get("velocities"))
    if velocities is None and all("momenta" in a.arrays for a in images):
        velocities = stack(lambda a: momenta_to_velocities(a.arrays["momenta"], a.get_masses()))
    forces = stack(lambda a: _calc_result(a, "forces"))
    potential = stack(lambda a: _calc_result(a, "energy", info_key="energy"))
    kinetic = stack(lambda a: a.info.get("kinetic_energy"))
    temperature = stack(lambda a: a.info.get("temperature"))
    time = stack(lambda a: a.info.get("time_fs", a.info.get("time")))
    return Trajectory(numbers=numbers, positions=positions, velocities=velocities, forces=forces,
                      potential_energy=potential, kinetic_energy=kinetic,
                      temperature=temperature, time=time, cell=np.asarray(first.cell[:], float),
                      pbc=np.asarray(first.pbc, bool), masses=masses,
                      cells=stack(lambda a: a.cell[:]),
                      pressure=stack(lambda a: a.info.get("pressure_bar")))


def _calc_result(atoms: Atoms, key: str, info_key: str | None = None):
    calc = atoms.calc
    if calc is not None and key in getattr(calc, "results", {}):
        return np.asarray(calc.results[key], float)
    if info_key is not None and info_key in atoms.info:
        return np.asarray(atoms.info[info_key], float)
    return None


def _read_h5(path: Path) -> Trajectory:
    import h5py

    try:
        fh = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path} is not a readable HDF5 file: {err}") from err
    with fh:
        if fh.attrs.get("format") != H5_FORMAT:
            raise ValueError(f"{path} is not a {H5_FORMAT} HDF5 file")
        get = lambda key: np.asarray(fh[key][...], float) if key in fh else None  # noqa: E731
        numbers = np.asarray(fh.attrs["numbers"], np.int64)
        masses = (np.asarray(fh.attrs["masses"], float) if "masses" in fh.attrs
                  else atomic_masses[numbers])
        return Trajectory(numbers=numbers, positions=get("positions"),
                          velocities=get("velocities"), forces=get("forces"),
                          potential_energy=get("potential_energy"),
                          kinetic_energy=get("kinetic_energy"), temperature=get("temperature"),
                          time=get("time"), cell=np.asarray(fh.attrs["cell"], float),
                          pbc=np.asarray(fh.attrs["pbc"], bool), masses=masses,
                          cells=get("cells"), pressure=get("pressure"))
