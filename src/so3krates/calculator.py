"""ASE calculator for SO3krates models.

Molecules (no periodic direction) keep their neighbour list on the device: a Verlet list with
a skin, rebuilt inside the compiled call only when some atom has moved more than half the
skin, so one call transfers the positions in and the results out and nothing else (no host
neighbour search, no padding on the host). Periodic systems, whose cell may change between
calls (NPT, cell relaxation), get their pairs from a host neighbour list (``vesin``) instead.

Either way the calculator compiles once per size: the padded capacities only grow (with
headroom), so moving atoms and small changes of the neighbour count never recompile.

Stress (``get_stress``, eV/Å³, ASE's sign and Voigt order) and per-atom stresses
(``get_stresses``) are the strain and pair-vector derivatives of the same energy (see
``so3krates.potential``), computed by their own compiled variants only when asked for.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.calculators.calculator import equal as ase_equal

from so3krates.batching import Capacity
from so3krates.compile import jit
from so3krates.md.system import System, model_energy_fn
from so3krates.model_io import electronic_state
from so3krates.neighbours import verlet as nl
from so3krates.neighbours.verlet import complete_cell
from so3krates.potential import derive

DEFAULT_SKIN = 0.5  # Å: Verlet skin of the device neighbour list of molecules
# ASE's Voigt order xx yy zz yz xz xy as (row, column) indices of a 3x3 stress.
VOIGT = (np.array([0, 1, 2, 1, 0, 0]), np.array([0, 1, 2, 2, 2, 1]))


class MoleculeEvaluator:
    """Energy, forces and per-atom energies of one molecule (fixed atoms, free boundaries) at
    any positions, with the neighbour list kept on the device between calls.

    Args:
        model: a loaded :class:`so3krates.model_io.Model`.
        numbers: atomic numbers, (N,).
        positions: start positions in Å, (N, 3), to size the neighbour list.
        skin: Verlet skin in Å.
    """

    def __init__(self, model, numbers: np.ndarray, positions: np.ndarray, skin: float = DEFAULT_SKIN):
        system = System.from_numbers(numbers)
        self.spec = nl.allocate(positions, system.cell, system.pbc, model.cutoff, skin)
        self._nbrs = None
        outputs = self._outputs(model, system)
        cell = jnp.zeros((3, 3))

        def evaluate(positions, nbrs, spec):
            nbrs = nl.update(positions, cell, nbrs, spec)
            return (*outputs(positions, cell, nbrs), nbrs.overflow), nbrs

        self._build = jit(lambda positions, spec: nl.build(positions, cell, spec),
                          static_argnames="spec")
        self._evaluate = jit(evaluate, static_argnames="spec")

    @staticmethod
    def _outputs(model, system):
        """``fn(positions, cell, nbrs) -> tuple of arrays`` that a call returns: energy, forces
        and per-atom energies (an ensemble's evaluator adds its spread)."""
        derived = derive(model_energy_fn(model, system))

        def outputs(positions, cell, nbrs):
            out = derived(positions, cell, nbrs)
            return out.energy, out.forces, out.atomic_energies

        return outputs

    def evaluate(self, positions: np.ndarray) -> tuple[np.ndarray, ...]:
        """The outputs of :meth:`_outputs` at ``positions`` as NumPy arrays (the neighbour
        list updated, grown and rebuilt as needed)."""
        # NumPy in, NumPy out: a jitted call takes host arrays directly, and ``np.asarray`` per
        # output is cheaper than ``jax.device_get`` (together ~50 of ~2,000 us for aspirin).
        positions = np.asarray(positions, dtype=np.float64)
        while True:
            if self._nbrs is None:
                self._nbrs = self._build(positions, self.spec)
            out, nbrs = self._evaluate(positions, self._nbrs, self.spec)
            *values, overflow = (np.asarray(a) for a in out)
            if not overflow:
                self._nbrs = nbrs
                return tuple(values)
            # More pairs than allocated: grow, rebuild, and evaluate again (never drop pairs).
            self.spec = nl.grow(self.spec, nbrs)
            self._nbrs = None

    def __call__(self, positions: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """``(energy eV, forces (N, 3) eV/Å, per-atom energies (N,) eV)`` as float64 NumPy."""
        energy, forces, energies = self.evaluate(positions)[:3]
        return float(energy), forces, energies.astype(np.float64)

    def compiled_variants(self) -> int:
        """How many shapes the evaluation has been compiled for (1 unless it had to grow)."""
        return self._evaluate._cache_size()


def _equal(a, b, tol: float) -> bool:
    """ASE's ``equal(a, b, atol=tol)`` for arrays, with exact equality and differences beyond
    ``tol`` decided first, without its ``np.allclose`` (~15 us per call)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if np.array_equal(a, b):
        return True
    if a.dtype.kind in "fc" and b.dtype.kind in "fc" and np.max(np.abs(a - b)) > tol:
        return False  # (a NaN difference compares False and goes on to ASE's test)
    return bool(ase_equal(a, b, atol=tol))


def changed_properties(old, new, tol: float = 1e-15, excluded=()) -> list[str]:
    """What differs between ``old`` and ``new`` atoms: the same list, in the same order, as
    ``ase.calculators.calculator.compare_atoms``, at a fraction of its cost (0.25 ms of an
    aspirin force call through ASE went into that check)."""
    if old is None:
        return all_changes[:]
    to_check = set(all_changes) - set(excluded)
    changes = []
    for prop in ("cell", "pbc"):
        if prop in to_check:
            to_check.remove(prop)
            if not _equal(getattr(old, prop), getattr(new, prop), tol):
                changes.append(prop)
    arrays_old, arrays_new = set(old.arrays), set(new.arrays)
    changes += to_check & (arrays_old ^ arrays_new)
    for prop in to_check & arrays_old & arrays_new:
        if not _equal(old.arrays[prop], new.arrays[prop], tol):
            changes.append(prop)
    return changes


def explain_non_finite(atoms) -> None:
    """Raise ``ValueError`` for a NaN or infinite energy, naming overlapping atoms (the usual
    cause) if there are any; checked only then, off the fast path."""
    from so3krates.data.dataset import find_overlap

    pair = find_overlap(atoms.positions, complete_cell(atoms.cell[:], atoms.pbc), atoms.pbc)
    cause = f": atoms {pair[0]} and {pair[1]} overlap" if pair else ""
    raise ValueError(f"the model's energy is not finite{cause}")


class So3kratesCalculator(Calculator):
    """ASE calculator: ``energy``, ``free_energy``, ``forces``, per-atom ``energies``, and for
    periodic systems ``stress`` and per-atom ``stresses`` (eV/Å³, ASE's sign: tension positive).

    Models with physical terms also give ``results["energy_terms"]`` (each term's energy, eV),
    and with electrostatics ``charges`` (e) and ``dipole`` (e Å). The total charge and
    unpaired electrons come from ``atoms.info`` ("charge" or "total_charge"; "spin", or
    "multiplicity" = 2S + 1); changing them gives a new energy without recompiling.

    Slabs and wires (some directions not periodic) get the stress components of their periodic
    directions, over the volume of the cell as given (ASE's convention; the components along
    open directions are zero: a free surface carries no stress); a periodic cell without
    volume raises an error.

    Given an :class:`so3krates.ensemble.Ensemble` or an ensemble directory it is an
    :class:`EnsembleCalculator` (the members' mean, and their spread in ``results``).

    Args:
        model: a loaded :class:`so3krates.model_io.Model` or a model directory.
        dtype: ``"float32"`` or ``"float64"`` when loading from a directory.
        skin: Verlet skin in Å of the device neighbour list of molecules.
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress", "stresses",
                              "charges", "dipole"]

    def __new__(cls, model=None, *args, **kwargs):
        if cls is So3kratesCalculator and _is_ensemble(model):
            cls = EnsembleCalculator
        return super().__new__(cls)

    def __init__(self, model, dtype: str | None = None, skin: float = DEFAULT_SKIN, **kwargs):
        super().__init__(**kwargs)
        if isinstance(model, (str, os.PathLike)):
            from so3krates.model_io import load_model

            model = load_model(model, dtype=dtype)
        self.model = model
        self.skin = skin
        self._capacity: Capacity | None = None
        self._molecule: MoleculeEvaluator | None = None

    def check_state(self, atoms, tol: float = 1e-15) -> list[str]:
        """ASE's :meth:`~ase.calculators.calculator.Calculator.check_state`, faster (see
        :func:`changed_properties`)."""
        changes = changed_properties(self.atoms, atoms, tol, self.ignored_changes)
        if self.atoms is not None and electronic_state(self.atoms.info) != electronic_state(
                atoms.info):
            changes.append("initial_charges")  # ASE's name for a changed electronic input
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        if "numbers" in system_changes:
            self.model.check_elements(atoms.numbers)
        if "positions" in system_changes and not np.isfinite(atoms.positions).all():
            raise ValueError("positions contain NaN or inf")
        wants_stress = bool({"stress", "stresses"} & set(properties))
        # Models with physical terms or electronic inputs go through padded graphs (as periodic
        # systems do): their pairs, long-range pairs, charge and spin are graph inputs.
        if atoms.pbc.any() or self._graph_inputs:
            self._molecule = None
            if wants_stress and not atoms.pbc.any():
                raise PropertyNotImplementedError(
                    "stress needs a periodic cell; these atoms have pbc=False in every direction")
            self.results = self._graph(atoms, wants_stress, "stresses" in properties)
            return
        if wants_stress:
            raise PropertyNotImplementedError(
                "stress needs a periodic cell; these atoms have pbc=False in every direction")
        if self._molecule is None or {"numbers", "pbc"} & set(system_changes):
            self._molecule = self._evaluator_class(self.model, atoms.numbers, atoms.positions,
                                                   self.skin)
        self.results = self._molecule_results(atoms)
        if not np.isfinite(self.results["energy"]):
            explain_non_finite(atoms)

    _evaluator_class = MoleculeEvaluator

    def _molecule_results(self, atoms) -> dict:
        energy, forces, energies = self._molecule(atoms.positions)
        return {"energy": energy, "free_energy": energy, "forces": forces, "energies": energies}

    @property
    def _graph_inputs(self) -> bool:
        return self.model.terms.active or self.model.config.charge_spin

    def _graph(self, atoms, stress: bool, stresses: bool) -> dict:
        if stress and not abs(atoms.cell.volume) > 1e-9:
            raise ValueError(f"the cell {atoms.cell[:].tolist()} has no volume: no stress")
        if atoms.pbc.any():
            complete_cell(atoms.cell[:], atoms.pbc)  # a ValueError for a degenerate cell
        graph_, self._capacity = self.model.graph(atoms, self._capacity, pair_halves=True)
        pred = self.model.predict(graph_, pair_halves=True, stress=stress and not stresses,
                                  atomic_stresses=stresses)
        return self._graph_results(atoms, pred, stress, stresses)

    def _graph_results(self, atoms, pred, stress: bool, stresses: bool) -> dict:
        """``results`` from a prediction of the padded graph of ``atoms``."""
        # Outputs to the host as they are, then slice off the padding there.
        n = len(atoms)
        energy = float(np.asarray(pred.energy)[0])
        if not np.isfinite(energy):
            explain_non_finite(atoms)
        results = {"energy": energy, "free_energy": energy,
                   "forces": np.asarray(pred.forces)[:n].astype(np.float64),
                   "energies": np.asarray(pred.atomic_energies)[:n].astype(np.float64)}
        if stress:
            # Components along open directions of slabs and wires are not stresses.
            periodic = np.outer(atoms.pbc, atoms.pbc)
            sigma = np.where(periodic, np.asarray(pred.stress, np.float64)[0], 0.0)
            results["stress"] = sigma[VOIGT]
            if stresses:  # (N, 6), all atoms at once
                per_atom = np.where(periodic, np.asarray(pred.atomic_stresses, np.float64)[:n], 0.0)
                results["stresses"] = per_atom[:, VOIGT[0], VOIGT[1]]
        if pred.energy_terms is not None:
            results["energy_terms"] = {k: float(np.asarray(v)[0])
                                       for k, v in pred.energy_terms.items()}
        if pred.charges is not None:
            results["charges"] = np.asarray(pred.charges, np.float64)[:n]
            results["dipole"] = np.asarray(pred.dipole, np.float64)[0]
        return results

    def compiled_variants(self, stress: bool = False) -> int:
        """Shapes this calculator's evaluation has been compiled for: the molecule evaluator's,
        or for periodic systems the model's ``predict`` (shared by its calculators; with or
        without stress)."""
        if self._molecule is not None:
            return self._molecule.compiled_variants()
        return self.model.compiled_variants(pair_halves=True, stress=stress)


def _is_ensemble(model) -> bool:
    from so3krates.ensemble import Ensemble, is_ensemble

    return isinstance(model, Ensemble) or (isinstance(model, (str, os.PathLike))
                                           and is_ensemble(model))


class EnsembleMoleculeEvaluator(MoleculeEvaluator):
    """:class:`MoleculeEvaluator` of an :class:`so3krates.ensemble.Ensemble`: every member in
    one call; :meth:`evaluate` returns the mean energy, forces and per-atom energies, then the
    energy uncertainty (eV), the per-atom force uncertainty (N,) eV/Å and the members'
    energies (M,) eV."""

    @staticmethod
    def _outputs(ensemble, system):
        derived = ensemble.derived_fn(system)

        def outputs(positions, cell, nbrs):
            out = derived(positions, cell, nbrs)
            return (out.energy, out.forces, out.atomic_energies, out.energy_uncertainty,
                    out.forces_uncertainty, out.member_energies)

        return outputs


class EnsembleCalculator(So3kratesCalculator):
    """ASE calculator of a committee (:class:`so3krates.ensemble.Ensemble`): the results of
    :class:`So3kratesCalculator` as the members' mean (the mean force is the gradient of the
    mean energy), plus their spread:

    - ``results["energy_uncertainty"]``: standard deviation of the members' energies (ddof=0),
      eV;
    - ``results["forces_uncertainty"]``: (N,) eV/Å, per atom ``sqrt(mean over x, y, z of the
      members' force variance)``;
    - ``results["member_energies"]``: (M,) eV.

    Every member is evaluated in one compiled call, which, as for one model, is compiled once
    per system size (moving atoms do not recompile). ``So3kratesCalculator(ensemble)`` gives
    one too.

    Args:
        ensemble: a loaded :class:`so3krates.ensemble.Ensemble` or an ensemble directory.
        dtype: ``"float32"`` or ``"float64"`` when loading from a directory.
        skin: Verlet skin in Å of the device neighbour list of molecules.
    """

    implemented_properties = So3kratesCalculator.implemented_properties + [
        "energy_uncertainty", "forces_uncertainty", "member_energies"]
    _evaluator_class = EnsembleMoleculeEvaluator

    def __init__(self, ensemble, dtype: str | None = None, skin: float = DEFAULT_SKIN, **kwargs):
        if isinstance(ensemble, (str, os.PathLike)):
            from so3krates.ensemble import load_ensemble

            ensemble = load_ensemble(ensemble, dtype=dtype)
        super().__init__(ensemble, dtype=dtype, skin=skin, **kwargs)

    @property
    def ensemble(self):
        return self.model

    def _molecule_results(self, atoms) -> dict:
        energy, forces, energies, e_unc, f_unc, members = self._molecule.evaluate(atoms.positions)
        energy = float(energy)
        return {"energy": energy, "free_energy": energy, "forces": forces,
                "energies": energies.astype(np.float64), "energy_uncertainty": float(e_unc),
                "forces_uncertainty": f_unc.astype(np.float64),
                "member_energies": members.astype(np.float64)}

    def _graph_results(self, atoms, pred, stress: bool, stresses: bool) -> dict:
        results = super()._graph_results(atoms, pred, stress, stresses)
        n = len(atoms)
        results["energy_uncertainty"] = float(np.asarray(pred.energy_uncertainty)[0])
        results["forces_uncertainty"] = np.asarray(pred.forces_uncertainty, np.float64)[:n]
        results["member_energies"] = np.asarray(pred.members.energy, np.float64)[:, 0]
        return results
