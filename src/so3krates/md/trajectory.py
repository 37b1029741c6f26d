"""MD trajectory files written in chunks (extxyz, ASE .traj, HDF5); restart state lives in
:mod:`so3krates.md.restart`.

Units (ASE units, user-facing time in fs): positions Å, velocities Å/fs, energies eV, forces
eV/Å, temperature K, time fs, masses amu. The format follows the file extension:

* ``.xyz`` / ``.extxyz``: extended XYZ via ``ase.io`` (8 decimals per number); per-frame info
  ``energy`` (potential), ``kinetic_energy``, ``temperature``, ``time_fs``; per-atom arrays
  ``velocities`` (Å/fs) and ``forces``.
* ``.traj``: ``ase.io.Trajectory``; energy/forces through a ``SinglePointCalculator``,
  velocities as ASE momenta, time/temperature/kinetic energy in ``atoms.info``.
* ``.h5`` / ``.hdf5``: resizable, chunked datasets, flushed after every chunk so that a killed
  run keeps every chunk written before it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from ase import Atoms, units
from ase.data import atomic_masses

from so3krates.fileio import atomic_write_bytes

XYZ_SUFFIXES = (".xyz", ".extxyz")
TRAJ_SUFFIXES = (".traj",)
H5_SUFFIXES = (".h5", ".hdf5")
SUPPORTED_SUFFIXES = XYZ_SUFFIXES + TRAJ_SUFFIXES + H5_SUFFIXES

H5_FORMAT = "so3krates-md-trajectory"
H5_FORMAT_VERSION = 1
H5_UNITS = {
    "positions": "Angstrom",
    "velocities": "Angstrom/fs",
    "forces": "eV/Angstrom",
    "potential_energy": "eV",
    "kinetic_energy": "eV",
    "temperature": "K",
    "time": "fs",
    "cell": "Angstrom",
    "masses": "amu",
}
# Per-frame datasets of the HDF5 format; all share the leading frame axis.
_H5_FRAME_KEYS = ("positions", "velocities", "forces", "potential_energy", "kinetic_energy",
                  "temperature", "time")
# Per-frame datasets written only by runs that have them (NPT): cell and pressure.
_H5_OPTIONAL_KEYS = ("cells", "pressure")



class Trajectory(NamedTuple):
    """A trajectory in memory; F frames of N atoms, ASE units with time in fs.

    Fields that the file does not contain (trajectories from other programs) are ``None``.
    """

    numbers: np.ndarray  # (N,) atomic numbers
    positions: np.ndarray  # (F, N, 3) Å
    velocities: np.ndarray | None  # (F, N, 3) Å/fs
    forces: np.ndarray | None  # (F, N, 3) eV/Å
    potential_energy: np.ndarray | None  # (F,) eV
    kinetic_energy: np.ndarray | None  # (F,) eV
    temperature: np.ndarray | None  # (F,) K
    time: np.ndarray | None  # (F,) fs
    cell: np.ndarray  # (3, 3) Å, rows are cell vectors
    pbc: np.ndarray  # (3,) bool
    masses: np.ndarray  # (N,) amu
    cells: np.ndarray | None = None  # (F, 3, 3) Å, the cell of each frame
    pressure: np.ndarray | None = None  # (F,) bar (NPT runs)

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])


def trajectory_format(path: str | os.PathLike) -> str:
    """``"xyz"``, ``"traj"`` or ``"h5"`` from the file extension; ``ValueError`` otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix in XYZ_SUFFIXES:
        return "xyz"
    if suffix in TRAJ_SUFFIXES:
        return "traj"
    if suffix in H5_SUFFIXES:
        return "h5"
    raise ValueError(
        f"unsupported trajectory extension {suffix!r} of {path}; "
        f"supported: {', '.join(SUPPORTED_SUFFIXES)}"
    )


def velocities_to_momenta(velocities: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """ASE momenta (amu·Å/ASE-time) from velocities (..., N, 3) in Å/fs and masses (N,) in amu."""
    # One fs is ``units.fs`` ASE time units, so v[Å/ASE-time] = v[Å/fs] / units.fs.
    return np.asarray(velocities) * np.asarray(masses)[:, None] / units.fs


def momenta_to_velocities(momenta: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Velocities (..., N, 3) in Å/fs from ASE momenta and masses (N,) in amu."""
    return np.asarray(momenta) / np.asarray(masses)[:, None] * units.fs


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


class TrajectoryWriter:
    """Append chunks of MD frames to a trajectory file; usable as a context manager.

    Parameters
    ----------
    path
        Output file; the format follows the extension (``.xyz``/``.extxyz``, ``.traj``,
        ``.h5``/``.hdf5``).
    numbers
        (N,) atomic numbers.
    cell
        (3, 3) cell in Å (rows are cell vectors; zeros for molecules). Constant over the run.
    pbc
        (3,) periodic boundary conditions.
    append
        Continue an existing file (restart) instead of overwriting it. For HDF5 the atoms,
        cell and pbc must match the file.
    masses
        (N,) masses in amu; defaults to the standard masses of ``numbers``. Needed to turn
        velocities into ASE momenta (``.traj``) and stored in the file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        numbers: np.ndarray,
        cell: np.ndarray,
        pbc: np.ndarray | bool,
        append: bool = False,
        masses: np.ndarray | None = None,
    ) -> None:
        self.path = Path(path)
        self.format = trajectory_format(self.path)
        self.numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        self.cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
        self.pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        self.masses = (atomic_masses[self.numbers] if masses is None
                       else np.asarray(masses, dtype=np.float64).reshape(-1))
        if self.masses.shape != self.numbers.shape:
            raise ValueError(
                f"masses {self.masses.shape} do not match numbers {self.numbers.shape}")
        # Written into every frame only when they differ from the standard masses.
        self._custom_masses = not np.allclose(self.masses, atomic_masses[self.numbers])
        self.n_atoms = int(self.numbers.size)
        self._handle = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        exists = self.path.exists() and self.path.stat().st_size > 0
        if self.format == "xyz":
            self._handle = open(self.path, "a" if append else "w")
        elif self.format == "traj":
            from ase.io.trajectory import Trajectory as AseTrajectory

            if append and exists:
                self._check_traj_atoms()
            self._handle = AseTrajectory(str(self.path), "a" if append and exists else "w")
        else:
            self._open_h5(append and exists)

    # -- format-specific setup ------------------------------------------------------------

    def _check_traj_atoms(self) -> None:
        from ase.io.trajectory import Trajectory as AseTrajectory

        with AseTrajectory(str(self.path), "r") as old:
            if len(old) and not np.array_equal(old[0].numbers, self.numbers):
                raise ValueError(f"cannot append to {self.path}: it holds different atoms")

    def _open_h5(self, append: bool) -> None:
        import h5py

        if append:
            fh = h5py.File(self.path, "a")
            try:
                if fh.attrs.get("format") != H5_FORMAT:
                    raise ValueError(f"cannot append to {self.path}: not a {H5_FORMAT} file")
                same = (np.array_equal(fh.attrs["numbers"], self.numbers)
                        and np.allclose(fh.attrs["cell"], self.cell)
                        and np.array_equal(fh.attrs["pbc"], self.pbc))
                if not same:
                    raise ValueError(
                        f"cannot append to {self.path}: atoms, cell or pbc differ from the file")
            except BaseException:
                fh.close()
                raise
        else:
            fh = h5py.File(self.path, "w")
            fh.attrs["format"] = H5_FORMAT
            fh.attrs["format_version"] = H5_FORMAT_VERSION
            fh.attrs["numbers"] = self.numbers
            fh.attrs["cell"] = self.cell
            fh.attrs["pbc"] = self.pbc
            fh.attrs["masses"] = self.masses
            fh.attrs["units"] = json.dumps(H5_UNITS)
            n = self.n_atoms
            # ~1 MiB chunks of per-atom data; per-frame scalars in larger chunks.
            frames_per_chunk = int(max(1, min(1024, (1 << 20) // max(1, 24 * n))))
            for key in ("positions", "velocities"):
                fh.create_dataset(key, shape=(0, n, 3), maxshape=(None, n, 3),
                                  chunks=(frames_per_chunk, n, 3), dtype="f8")
            for key in ("potential_energy", "kinetic_energy", "temperature", "time"):
                fh.create_dataset(key, shape=(0,), maxshape=(None,), chunks=(4096,), dtype="f8")
            fh.flush()
        self._handle = fh

    # -- public API -----------------------------------------------------------------------

    def write(
        self,
        positions: np.ndarray,
        *,
        velocities: np.ndarray,
        potential_energy: np.ndarray,
        kinetic_energy: np.ndarray,
        temperature: np.ndarray,
        time: np.ndarray,
        forces: np.ndarray | None = None,
        cells: np.ndarray | None = None,
        pressure: np.ndarray | None = None,
    ) -> None:
        """Append a chunk of F frames.

        Parameters
        ----------
        positions
            (F, N, 3) Å (a single frame (N, 3) is accepted).
        velocities
            (F, N, 3) Å/fs.
        potential_energy, kinetic_energy
            (F,) eV.
        temperature
            (F,) K.
        time
            (F,) fs.
        forces
            Optional (F, N, 3) eV/Å.
        cells
            Optional (F, 3, 3) Å, the cell of each frame (NPT); default the writer's cell.
        pressure
            Optional (F,) bar (NaN where not computed: not written).
        """
        if self._handle is None:
            raise ValueError(f"trajectory writer for {self.path} is closed")
        pos = _frames(positions, self.n_atoms, "positions")
        n_frames = pos.shape[0]
        vel = _frames(velocities, self.n_atoms, "velocities", n_frames)
        frc = None if forces is None else _frames(forces, self.n_atoms, "forces", n_frames)
        scalars = {
            name: _per_frame(value, n_frames, name)
            for name, value in (("potential_energy", potential_energy),
                                ("kinetic_energy", kinetic_energy),
                                ("temperature", temperature), ("time", time))
        }
        if cells is not None:
            cells = np.asarray(cells, dtype=np.float64).reshape(n_frames, 3, 3)
        if pressure is not None:
            pressure = _per_frame(pressure, n_frames, "pressure")
            pressure = None if np.isnan(pressure).all() else pressure
        if n_frames == 0:
            return
        if self.format == "h5":
            self._write_h5(pos, vel, frc, scalars, cells, pressure)
        else:
            images = [self._atoms(pos[k], vel[k], None if frc is None else frc[k],
                                  {name: float(v[k]) for name, v in scalars.items()},
                                  None if cells is None else cells[k],
                                  None if pressure is None else float(pressure[k]))
                      for k in range(n_frames)]
            if self.format == "xyz":
                import ase.io

                ase.io.write(self._handle, images, format="extxyz")
                self._handle.flush()
                os.fsync(self._handle.fileno())
            else:
                for atoms in images:
                    self._handle.write(atoms)

    def close(self) -> None:
        """Flush and close the file; further ``write`` calls raise ``ValueError``."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            handle.close()

    def __enter__(self) -> "TrajectoryWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- helpers --------------------------------------------------------------------------

    def _atoms(self, pos, vel, frc, scalars: dict[str, float], cell=None,
               pressure: float | None = None) -> Atoms:
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(numbers=self.numbers, positions=pos,
                      cell=self.cell if cell is None else cell, pbc=self.pbc)
        if pressure is not None:
            atoms.info["pressure_bar"] = pressure
        if self._custom_masses:
            atoms.set_masses(self.masses)
        # ASE momenta, so that ase.io.read gives the right get_velocities(); extxyz also
        # keeps an explicit Å/fs column (what read_trajectory reads, and humans).
        atoms.set_momenta(velocities_to_momenta(vel, self.masses))
        if self.format == "xyz":
            atoms.new_array("velocities", vel)
        atoms.info["kinetic_energy"] = scalars["kinetic_energy"]
        atoms.info["temperature"] = scalars["temperature"]
        atoms.info["time_fs"] = scalars["time"]
        results = {"energy": scalars["potential_energy"]}
        if frc is not None:
            results["forces"] = frc
        atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms

    def _write_h5(self, pos, vel, frc, scalars, cells=None, pressure=None) -> None:
        fh = self._handle
        start = fh["positions"].shape[0]
        stop = start + pos.shape[0]
        for key, value, shape in (("cells", cells, (3, 3)), ("pressure", pressure, ())):
            if value is None:
                continue
            if key not in fh:  # per-frame datasets that runs with a fixed cell do not need
                ds = fh.create_dataset(key, shape=(start, *shape), maxshape=(None, *shape),
                                       dtype="f8")
                if start:
                    ds[...] = fh.attrs["cell"] if key == "cells" else np.nan
            fh[key].resize(stop, axis=0)
            fh[key][start:stop] = value
        if frc is not None and "forces" not in fh:
            ds = fh.create_dataset("forces", shape=(start, self.n_atoms, 3),
                                   maxshape=(None, self.n_atoms, 3),
                                   chunks=fh["positions"].chunks, dtype="f8")
            if start:
                ds[...] = np.nan  # frames written before forces were available
        if frc is None and "forces" in fh:
            frc = np.full_like(pos, np.nan)
        data = {"positions": pos, "velocities": vel, "forces": frc, **scalars}
        for key in _H5_FRAME_KEYS:
            if key in fh and data[key] is not None:
                fh[key].resize(stop, axis=0)
                fh[key][start:stop] = data[key]
        fh.flush()


def _frames(x, n_atoms: int, name: str, n_frames: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    wrong_frames = n_frames is not None and x.ndim == 3 and x.shape[0] != n_frames
    if x.ndim != 3 or x.shape[1:] != (n_atoms, 3) or wrong_frames:
        want = f"({'F' if n_frames is None else n_frames}, {n_atoms}, 3)"
        raise ValueError(f"{name} has shape {x.shape}, expected {want}")
    return x


def _per_frame(x, n_frames: int, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.shape != (n_frames,):
        raise ValueError(f"{name} has shape {x.shape}, expected ({n_frames},)")
    return x


# ---------------------------------------------------------------------------------------------
# Truncation (restart)
# ---------------------------------------------------------------------------------------------


def truncate_trajectory(path: str | os.PathLike, n_frames: int) -> int:
    """Drop every frame of ``path`` beyond the first ``n_frames``; returns how many were dropped.

    Used on restart from a state saved at frame ``n_frames``: frames written after it are
    discarded so that the continued run does not duplicate them. A partially written last
    frame (extxyz of a killed run) is dropped too. Raises ``ValueError`` if the file holds fewer
    than ``n_frames`` complete frames. The file must not be open in a writer.
    """
    path = Path(path)
    fmt = trajectory_format(path)
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    if not path.exists():
        raise ValueError(f"trajectory {path} does not exist")
    if fmt == "xyz":
        data = path.read_bytes()
        ends = _xyz_frame_ends(data)
        _check_enough(path, len(ends), n_frames)
        keep = ends[n_frames - 1] if n_frames else 0
        dropped = len(ends) - n_frames
        if keep != len(data):
            atomic_write_bytes(path, data[:keep])
        return dropped
    if fmt == "traj":
        from ase.io.trajectory import Trajectory as AseTrajectory
        from ase.io.trajectory import TrajectoryWriter as AseWriter

        with AseTrajectory(str(path), "r") as old:
            total = len(old)
            _check_enough(path, total, n_frames)
            if total == n_frames:
                return 0
            buf = _KeepOpenBytesIO()
            if n_frames:  # an empty file, like a fresh writer's, when nothing is kept
                writer = AseWriter(buf, "w")
                for k in range(n_frames):
                    writer.write(old[k])
                writer.close()
        atomic_write_bytes(path, buf.getvalue())
        return total - n_frames
    import h5py

    with h5py.File(path, "a") as fh:
        total = int(fh["positions"].shape[0])
        _check_enough(path, total, n_frames)
        for key in _H5_FRAME_KEYS + _H5_OPTIONAL_KEYS:
            if key in fh:
                fh[key].resize(n_frames, axis=0)
        fh.flush()
    return total - n_frames


class _KeepOpenBytesIO(io.BytesIO):
    """In-memory file that survives ``close()`` (ASE's writer closes it; we still need the bytes)."""

    def close(self) -> None:
        pass


def _check_enough(path: Path, available: int, wanted: int) -> None:
    if available < wanted:
        raise ValueError(f"{path} holds {available} complete frames, fewer than {wanted}")


def _xyz_frame_ends(data: bytes) -> list[int]:
    """Byte offsets just past each complete frame of an (ext)xyz file."""
    ends, pos, size = [], 0, len(data)
    while pos < size:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        head = data[pos:nl].strip()
        if not head:  # tolerate blank lines between frames
            pos = nl + 1
            continue
        try:
            n_atoms = int(head)
        except ValueError:
            break
        end = nl
        for _ in range(n_atoms + 1):  # comment line + atom lines
            end = data.find(b"\n", end + 1)
            if end < 0:
                return ends
        pos = end + 1
        ends.append(pos)
    return ends


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
