"""De-duplication of minima found while exploring a potential-energy surface.

Two relaxed structures are the same minimum when their energies agree and their RMSD after
optimal superposition -- translation, rotation and the permutation of identical elements
(equivalent H atoms of a methyl group, atoms of a cluster) -- is small. Host-side numpy/scipy:
this runs once per relaxed structure, not per MD step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.transform import Rotation


def kabsch_rotation(a: np.ndarray, b: np.ndarray, allow_reflection: bool = False) -> np.ndarray:
    """Rotation ``R`` (3, 3) minimising ``|a - b @ R|`` for centred (N, 3) point sets.

    Kabsch (1976): from the SVD of the covariance ``b^T a``; the sign correction keeps
    ``det R = +1`` (a proper rotation) unless ``allow_reflection``.
    """
    u, _, vt = np.linalg.svd(b.T @ a)
    if not allow_reflection and np.linalg.det(u @ vt) < 0:
        u[:, -1] = -u[:, -1]
    return u @ vt


def _principal_axes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and axes (columns) of the gyration tensor of centred (N, 3) x."""
    return np.linalg.eigh(x.T @ x / max(len(x), 1))


def _start_rotations(a: np.ndarray, b: np.ndarray, allow_reflection: bool) -> list[np.ndarray]:
    """Initial rotations of ``b`` onto ``a`` for the permutation search.

    Principal axes of ``b`` mapped onto those of ``a`` with all sign choices. When principal
    moments are (nearly) degenerate the axes are arbitrary within the degenerate subspace, so
    rotations within it are added: about the unique axis of a symmetric top, and a fixed set
    of random rotations for a spherical top (clusters such as icosahedra).
    """
    wa, va = _principal_axes(a)
    wb, vb = _principal_axes(b)
    scale = max(wa.max(), 1e-12)
    degenerate = [abs(wa[k + 1] - wa[k]) < 0.05 * scale for k in range(2)]
    starts = []
    for signs in product((1.0, -1.0), repeat=3):
        r = vb @ np.diag(signs) @ va.T
        if allow_reflection or np.linalg.det(r) > 0:
            starts.append(r)
    if degenerate[0] != degenerate[1]:
        # Symmetric top: sweep the rotation about the unique axis (of a's frame).
        unique = 2 if degenerate[0] else 0
        axis = np.zeros(3)
        axis[unique] = 1.0
        sweep = Rotation.from_rotvec(np.outer(np.linspace(0, 2 * np.pi, 24, endpoint=False), axis)).as_matrix()
        starts = [r @ va @ s.T @ va.T for r in starts for s in sweep]
    elif degenerate[0] and degenerate[1]:
        starts += list(Rotation.random(96, random_state=0).as_matrix())
    return starts


def _assign(a: np.ndarray, b_rot: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """Permutation ``p`` with ``b_rot[p]`` closest to ``a`` (Hungarian method per element)."""
    perm = np.arange(len(a))
    for idx in groups:
        cost = ((a[idx, None, :] - b_rot[None, idx, :]) ** 2).sum(-1)
        _, col = linear_sum_assignment(cost)
        perm[idx] = idx[col]
    return perm


def kabsch_rmsd(
    a: np.ndarray,
    b: np.ndarray,
    numbers: np.ndarray | None = None,
    permute: bool = True,
    allow_reflection: bool = False,
    max_rounds: int = 20,
) -> float:
    """RMSD in Å between two structures after optimal superposition.

    Optimal over translation and rotation (proper rotations unless ``allow_reflection``) and,
    when ``permute``, over permutations of atoms of the same element: Kabsch alignment and
    per-element assignment (``scipy.optimize.linear_sum_assignment``) alternate until the
    permutation is stable, from several starting alignments (principal axes with sign flips,
    plus rotations within degenerate principal subspaces, plus the identity permutation);
    the best is kept. This is a heuristic for the permutation (the exact problem is hard),
    but it is exact for a permuted rigid copy and reliable for small molecules and clusters.

    Args:
        a: positions in Å, shape (N, 3).
        b: positions in Å, shape (N, 3), the same atoms (elements) as ``a`` up to order.
        numbers: atomic numbers, shape (N,); only atoms with equal numbers may be permuted.
            None: all atoms are of one element.
        permute: whether to optimise over permutations; False: atom ``i`` of ``a`` is atom
            ``i`` of ``b``.
        allow_reflection: also allow improper rotations (mirror images count as equal).
        max_rounds: alternations of alignment and assignment per start.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 3)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 3)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    if len(a) == 0:
        return 0.0
    a = a - a.mean(0)
    b = b - b.mean(0)  # the centroid is invariant under permutations

    def rmsd(perm: np.ndarray, r: np.ndarray) -> float:
        return float(np.sqrt(((a - b[perm] @ r) ** 2).sum(-1).mean()))

    identity = np.arange(len(a))
    direct = kabsch_rotation(a, b, allow_reflection)
    best = rmsd(identity, direct)
    if not permute:
        return best
    numbers = np.zeros(len(a), int) if numbers is None else np.asarray(numbers).reshape(-1)
    groups = [np.flatnonzero(numbers == z) for z in np.unique(numbers)]
    groups = [g for g in groups if len(g) > 1]
    if not groups:
        return best
    starts = [direct] + _start_rotations(a, b, allow_reflection)
    seen: set[bytes] = set()
    for r in starts:
        perm = _assign(a, b @ r, groups)
        for _ in range(max_rounds):
            key = perm.tobytes()
            if key in seen:  # this permutation was already refined from another start
                break
            seen.add(key)
            r = kabsch_rotation(a, b[perm], allow_reflection)
            best = min(best, rmsd(perm, r))
            new = _assign(a, b @ r, groups)
            if np.array_equal(new, perm):
                break
            perm = new
        if best < 1e-10:  # cannot improve on an exact match
            break
    return best


@dataclass
class MinimaSet:
    """Distinct minima found so far.

    Two structures are the same minimum when ``|E1 - E2| < energy_tol`` AND their
    :func:`kabsch_rmsd` (with permutations of identical elements) is ``< rmsd_tol``, and they
    have the same composition.

    By default mirror images count as the same minimum (``allow_reflection=True``): they have
    the same energy and are the same minimum up to permutation-inversion, as minima are
    counted in the cluster literature (LJ7 has 4 minima, one of them chiral) and as conformer
    searches treat, e.g., the gauche+/gauche- conformers of butane. Set it to False to keep
    enantiomers apart.

    Attributes:
        energy_tol: energy tolerance in eV.
        rmsd_tol: RMSD tolerance in Å.
        permute: allow permutations of identical elements in the RMSD.
        allow_reflection: count mirror images (enantiomers) as the same minimum.
        positions: positions of each distinct minimum (as first found), list of (N, 3) Å.
        energies: energy of each distinct minimum in eV.
        numbers: atomic numbers of each distinct minimum.
        found_at: time (or the number of structures added before, if no time was given) at
            which each minimum was first found.
        counts: how many added structures were this minimum.
    """

    energy_tol: float = 1e-3
    rmsd_tol: float = 0.1
    permute: bool = True
    allow_reflection: bool = True
    positions: list[np.ndarray] = field(default_factory=list)
    energies: list[float] = field(default_factory=list)
    numbers: list[np.ndarray] = field(default_factory=list)
    found_at: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    num_added: int = 0

    def __len__(self) -> int:
        return len(self.energies)

    def match(self, positions: np.ndarray, energy: float, numbers: np.ndarray) -> tuple[int, float]:
        """Index of the closest known minimum within the tolerances and its RMSD; (-1, inf) if none."""
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        numbers = np.asarray(numbers).reshape(-1)
        best, best_rmsd = -1, np.inf
        # Cheap energy filter first; the RMSD (permutation search) only for candidates.
        for k in np.argsort(np.abs(np.asarray(self.energies) - energy)):
            if abs(self.energies[k] - energy) >= self.energy_tol:
                break
            if len(self.numbers[k]) != len(numbers) or not np.array_equal(np.sort(self.numbers[k]), np.sort(numbers)):
                continue
            rmsd = self._rmsd(positions, numbers, k)
            if rmsd < self.rmsd_tol and rmsd < best_rmsd:
                best, best_rmsd = int(k), rmsd
        return best, best_rmsd

    def _rmsd(self, positions: np.ndarray, numbers: np.ndarray, k: int) -> float:
        ref, ref_numbers = self.positions[k], self.numbers[k]
        if not np.array_equal(ref_numbers, numbers):
            # Same composition, other order: sort both by element (the permutation search
            # only permutes within an element, so any consistent order works).
            oa, ob = np.argsort(ref_numbers, kind="stable"), np.argsort(numbers, kind="stable")
            ref, ref_numbers, positions = ref[oa], ref_numbers[oa], positions[ob]
        return kabsch_rmsd(ref, positions, ref_numbers, self.permute, self.allow_reflection)

    def add(
        self, positions: np.ndarray, energy: float, numbers: np.ndarray, time: float | None = None
    ) -> tuple[int, bool]:
        """Record a relaxed structure.

        Args:
            positions: positions in Å, shape (N, 3).
            energy: energy in eV.
            numbers: atomic numbers, shape (N,).
            time: when it was found (MD time, step, ...); default: the number of structures
                added before.

        Returns:
            ``(index, is_new)``: the index of its minimum in this set and whether it is new.
        """
        energy = float(energy)
        when = float(self.num_added if time is None else time)
        self.num_added += 1
        k, _ = self.match(positions, energy, numbers)
        if k >= 0:
            self.counts[k] += 1
            return k, False
        self.positions.append(np.array(positions, dtype=np.float64).reshape(-1, 3))
        self.energies.append(energy)
        self.numbers.append(np.array(numbers, dtype=np.int64).reshape(-1))
        self.found_at.append(when)
        self.counts.append(1)
        return len(self.energies) - 1, True

    def order(self) -> np.ndarray:
        """Indices of the minima sorted by energy (lowest first)."""
        return np.argsort(np.asarray(self.energies), kind="stable")

    def summary(self) -> list[dict]:
        """One dict per distinct minimum, sorted by energy: index, energy (eV), relative
        energy to the lowest (eV), found_at, count."""
        order = self.order()
        e0 = self.energies[order[0]] if len(order) else 0.0
        return [
            dict(index=int(k), energy=self.energies[k], relative_energy=self.energies[k] - e0,
                 found_at=self.found_at[k], count=self.counts[k])
            for k in order
        ]

    def to_json(self, path: str | Path | None = None) -> str:
        """The :meth:`summary` (plus tolerances) as JSON; also written to ``path`` if given."""
        text = json.dumps(
            dict(energy_tol=self.energy_tol, rmsd_tol=self.rmsd_tol, num_added=self.num_added,
                 minima=self.summary()),
            indent=2,
        )
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_atoms(self) -> list:
        """The distinct minima as ``ase.Atoms`` sorted by energy.

        The energy is attached as a ``SinglePointCalculator`` result (so that extxyz writes it
        as ``energy=`` and readers get it from ``get_potential_energy()``); the other summary
        fields (index, relative_energy, found_at, count) are in ``info``.
        """
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        frames = []
        for row in self.summary():
            k = row["index"]
            atoms = Atoms(numbers=self.numbers[k], positions=self.positions[k])
            atoms.info.update({key: v for key, v in row.items() if key != "energy"})
            atoms.calc = SinglePointCalculator(atoms, energy=row["energy"])
            frames.append(atoms)
        return frames

    def write(self, path: str | Path, numbers: np.ndarray | None = None) -> None:
        """Write all distinct minima sorted by energy to an extended-XYZ file.

        Args:
            path: output path (extxyz; ``energy``, ``count`` etc. in each frame's comment line).
            numbers: atomic numbers to use for every frame; default: those recorded by
                :meth:`add`.
        """
        import ase.io

        frames = self.to_atoms()
        if numbers is not None:
            for atoms in frames:
                atoms.numbers = np.asarray(numbers).reshape(-1)
        ase.io.write(str(path), frames, format="extxyz")
