"""DFT-D3(BJ) two-body dispersion (``so3krates.terms.d3``) in float64.

Energies, forces and virials are compared with the ``dftd3`` package (simple-dftd3's Python
API, pinned at 1.7.0) run with the three-body term off (``atm=False``, s9 = 0) and the same
cutoffs; those tests skip when it is not installed. The rest (parameters, padding, the cutoff
switch, unknown elements) needs nothing beyond the package.

dftd3 takes positions in bohr and converts its covalent radii from Å with CODATA 2018's bohr;
ASE's default bohr is CODATA 2014's (6e-10 relative apart). Positions are therefore handed to
dftd3 in 2018 bohr, which makes its CN ratio Rcov/r exactly ours (with ASE's bohr the forces
differ by up to 3e-7 relative, through the steep CN dependence of C6).

Fr–Pu (Z = 87–94) are left out of the comparison on purpose: the package's table holds the
original 2010 reference data, simple-dftd3 (since 2023) the revised actinide references of
Wittmann et al. (PCCP 2024): dimer energies differ by up to ~80 %.
"""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.collections import s22
from ase.units import Bohr, Hartree, create_units

import so3krates  # noqa: F401  (float64)
from so3krates.neighbours import long_range_list, neighbour_list
from so3krates.terms import d3
from so3krates.terms.d3 import (BJ_PARAMETERS, CN_CUTOFF, D3_CUTOFF, D3BJParams,
                                c6_coefficients, coordination_numbers, d3_bj_parameters,
                                d3_energy, d3_energy_from_pairs, d3_pair_energy,
                                reference_weights)

jax.config.update("jax_enable_x64", True)

try:
    import dftd3.interface
    from dftd3.interface import DispersionModel, RationalDampingParam
    HAVE_DFTD3 = True
except ImportError:  # pragma: no cover - depends on the environment
    HAVE_DFTD3 = False

needs_dftd3 = pytest.mark.skipif(
    not HAVE_DFTD3, reason="the dftd3 package (simple-dftd3 Python API; pip install "
    "dftd3==1.7.0) is not installed: no reference D3(BJ) values to compare with")

BOHR_2018 = create_units("2018")["Bohr"]  # dftd3's (mctc-lib's) bohr, Å
TOML_NAMES = {"bp86": "bp"}  # our name -> the key in dftd3's parameters.toml
RTOL = 1e-6


# --- helpers -------------------------------------------------------------------------------------

def dftd3_reference(atoms: Atoms, functional: str = "pbe", disp2: float = 1e4,
                    cn: float = 1e4) -> tuple[float, np.ndarray, np.ndarray | None]:
    """dftd3's two-body D3(BJ) energy (eV), gradient (N, 3) eV/Å and virial dE/dε (3, 3) eV
    (None for molecules); ``disp2`` and ``cn`` are its cutoffs in 2018 bohr."""
    periodic = bool(atoms.pbc.any())
    model = DispersionModel(atoms.numbers, atoms.positions / BOHR_2018,
                            atoms.cell.array / BOHR_2018 if periodic else None,
                            atoms.pbc if periodic else None)
    model.set_realspace_cutoff(disp2, disp2, cn)
    name = TOML_NAMES.get(functional, functional)
    out = model.get_dispersion(RationalDampingParam(method=name, atm=False), grad=True)
    virial = out["virial"] * Hartree if periodic else None
    return float(out["energy"]) * Hartree, out["gradient"] * Hartree / BOHR_2018, virial


@functools.partial(jax.jit, static_argnames=("cutoff", "cn_cutoff", "width", "cn_width"))
def energy_gradient_virial(positions, cell, numbers, centers, neighbours, shifts, mask, params,
                           cutoff=None, cn_cutoff=None, width=0.0, cn_width=0.0):
    """Energy (eV), dE/dR (N, 3) eV/Å and the strain derivative dE/dε (3, 3) eV."""
    def energy(pos, strain):
        deform = jnp.eye(3) + strain
        return d3_energy_from_pairs(pos @ deform, cell @ deform, numbers, centers, neighbours,
                                    shifts, mask, params, cutoff, cn_cutoff, width, cn_width)
    e, (grad, virial) = jax.value_and_grad(energy, argnums=(0, 1))(positions, jnp.zeros((3, 3)))
    return e, grad, virial


def ours(atoms: Atoms, functional: str = "pbe", cutoff: float | None = None,
         cn_cutoff: float | None = None, width: float = 0.0, cn_width: float = 0.0,
         list_cutoff: float | None = None):
    """Our energy, gradient and virial of ``atoms`` through a host-built half list.

    Atoms are padded to 96 and pairs to a power of two (at least 512), with padding atoms
    (Z = 0) and padding pairs between them: padding is exercised everywhere, and structures of
    similar size share one compilation."""
    if list_cutoff is None and cutoff is not None:
        list_cutoff = max(cutoff, cn_cutoff or 0.0)
    nl = (long_range_list(atoms.positions, atoms.cell.array, atoms.pbc, None)
          if list_cutoff is None else
          neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, list_cutoff, half=True))
    n, p = len(atoms), len(nl.centers)
    n_pad, p_pad = 96, max(512, 1 << (p - 1).bit_length())
    assert n < n_pad
    positions = np.zeros((n_pad, 3))
    positions[:n] = atoms.positions
    numbers = np.zeros(n_pad, np.int32)
    numbers[:n] = atoms.numbers
    centers = np.full(p_pad, n_pad - 1, np.int32)
    neighbours = np.full(p_pad, n_pad - 1, np.int32)
    shifts = np.zeros((p_pad, 3), np.int32)
    centers[:p], neighbours[:p], shifts[:p] = nl.centers, nl.neighbours, nl.shifts
    e, g, v = energy_gradient_virial(
        jnp.asarray(positions), jnp.asarray(atoms.cell.array), jnp.asarray(numbers), centers,
        neighbours, shifts, np.arange(p_pad) < p, d3_bj_parameters(functional), cutoff,
        cn_cutoff, width, cn_width)
    g = np.asarray(g)
    assert np.all(g[n:] == 0.0)
    return float(e), g[:n], np.asarray(v)


def max_rel(x, ref) -> float:
    """max |x - ref| / max |ref|: relative deviation of a vector quantity as a whole."""
    return float(np.max(np.abs(np.asarray(x) - ref)) / np.max(np.abs(ref)))


def bromobenzene() -> Atoms:
    atoms = molecule("C6H6")
    h = next(k for k, z in enumerate(atoms.numbers) if z == 1)
    c = int(np.argmin(np.linalg.norm(atoms.positions[:6] - atoms.positions[h], axis=1)))
    bond = atoms.positions[h] - atoms.positions[c]
    atoms.numbers[h] = 35
    atoms.positions[h] = atoms.positions[c] + 1.90 * bond / np.linalg.norm(bond)
    return atoms


def element_cluster(seed: int, z_max: int = 86) -> Atoms:
    """One atom of each element 1..z_max, on a rattled 2.6 Å grid in random order."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(5)] * 3, indexing="ij"), -1).reshape(-1, 3)[:z_max]
    positions = 2.6 * grid + 0.3 * rng.standard_normal(grid.shape)
    return Atoms(numbers=rng.permutation(np.arange(1, z_max + 1)), positions=positions)


def rattled(atoms: Atoms, seed: int) -> Atoms:
    """A copy with a random strain of 2 % and displacements of 0.05 Å (non-zero forces and a
    general virial)."""
    rng = np.random.default_rng(seed)
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.02 * rng.standard_normal((3, 3))),
                   scale_atoms=True)
    atoms.positions += 0.05 * rng.standard_normal(atoms.positions.shape)
    return atoms


def graphite() -> Atoms:
    a, c = 2.46, 6.70
    cell = [[a, 0, 0], [-a / 2, a * np.sqrt(3) / 2, 0], [0, 0, c]]
    return Atoms("C4", scaled_positions=[[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25],
                                         [2 / 3, 1 / 3, 0.75]], cell=cell, pbc=True)


MOLECULES = {
    "water_dimer": lambda: s22["Water_dimer"],
    "benzene_dimer": lambda: s22["Benzene_dimer_parallel_displaced"],
    "ethanol": lambda: molecule("CH3CH2OH"),
    "thiophene": lambda: molecule("C4H4S"),
    "bromobenzene": bromobenzene,
}

CRYSTALS = {
    "si_diamond": lambda: bulk("Si", "diamond", a=5.43),
    "nacl_rocksalt": lambda: bulk("NaCl", "rocksalt", a=5.64),
    "graphite": graphite,
}


# --- parameters and elements ---------------------------------------------------------------------

@needs_dftd3
def test_parameters_equal_dftd3_table():
    # dftd3.parameters would read this file too, but needs tomli/tomlkit/toml; tomllib does.
    path = Path(dftd3.interface.__file__).with_name("parameters.toml")
    if not path.is_file():
        pytest.skip(f"dftd3's parameter table is not at {path}")
    table = tomllib.loads(path.read_text())
    defaults = table["default"]["parameter"]["d3"]["bj"]
    for name, params in BJ_PARAMETERS.items():
        entry = {**defaults, **table["parameter"][TOML_NAMES.get(name, name)]["d3"]["bj"]}
        assert params == D3BJParams(entry["s6"], entry["s8"], entry["a1"], entry["a2"]), name


def test_parameter_names():
    assert d3_bj_parameters("PBE0") == BJ_PARAMETERS["pbe0"]
    assert d3_bj_parameters("B97-D") == BJ_PARAMETERS["b97d"]
    own = D3BJParams(1.0, 1.0, 0.4, 5.0)
    assert d3_bj_parameters(own) is own
    with pytest.raises(ValueError, match="no D3\\(BJ\\) parameters for functional 'pbe1'.*"
                                         "known: pbe, pbe0, .*b97d"):
        d3_bj_parameters("pbe1")


def test_unknown_elements():
    positions = np.array([[0.0, 0, 0], [2.0, 0, 0]])
    with pytest.raises(ValueError, match="Am \\(Z=95\\).*Z = 1-94"):
        d3_energy(positions, [6, 95], cutoff=None, cn_cutoff=None)
    with pytest.raises(ValueError, match="Z=0"):
        d3_pair_energy(jnp.array([2.0]), jnp.array([0]), jnp.array([6]), jnp.zeros(1),
                       jnp.zeros(1), jnp.array([True]), "pbe")
    # Under jit the atomic numbers are not known: such pairs give NaN, not Pu's data.
    jitted = jax.jit(lambda z: d3_pair_energy(jnp.array([2.0]), z, jnp.array([6]),
                                              jnp.zeros(1), jnp.zeros(1), jnp.array([True]),
                                              "pbe"))
    assert np.isnan(jitted(jnp.array([95]))).all()
    assert np.isfinite(jitted(jnp.array([94]))).all()


def test_actinides_hold_the_original_references():
    """Fr–Pu carry the 2010 references (2 per actinide), not simple-dftd3's revised ones."""
    ref = d3._reference()
    assert ref.ref_valid[89:95].sum(axis=1).tolist() == [2] * 6
    np.testing.assert_array_equal(ref.ref_cn[88, :3], [0.0, 0.9662, 1.8075])


def test_reference_weights_and_c6():
    w = reference_weights(jnp.array([6, 2, 1]), jnp.array([2.0, 3.0, 50.0]))
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-15)
    assert np.all(w[1, 1:] == 0.0) and np.all(w[2, 2:] == 0.0)  # He: 1 reference, H: 2
    # Far beyond every reference CN the quotient would be 0/0; the weights go to H's highest.
    assert float(w[2, 0]) == 1.0
    # C at CN 2 sits on its third reference (CN 1.9985), neighbours 1 apart weigh e^-4 as much.
    assert float(w[0, 2]) > 0.95
    # A single reference (He): C6 is its value whatever the CNs, 1.5583 Hartree bohr⁶ (2010).
    c6 = c6_coefficients(jnp.array([2]), jnp.array([2]), jnp.array([0.7]), jnp.array([3.0]))
    assert float(c6[0]) == pytest.approx(1.5583 * Hartree * Bohr**6, rel=1e-14)


# --- against dftd3 -------------------------------------------------------------------------------

@needs_dftd3
@pytest.mark.parametrize("name", list(MOLECULES))
def test_molecule_energy_and_forces_equal_dftd3(name):
    atoms = MOLECULES[name]()
    e_ref, g_ref, _ = dftd3_reference(atoms)
    e, g, _ = ours(atoms)
    assert e == pytest.approx(e_ref, rel=RTOL)
    assert max_rel(g, g_ref) < RTOL
    if name == "water_dimer":  # the convenience function (it compiles for each pair count)
        e_plain = float(d3_energy(atoms.positions, atoms.numbers, cutoff=None, cn_cutoff=None))
        assert e_plain == pytest.approx(e, rel=1e-12)


@needs_dftd3
@pytest.mark.parametrize("seed", [0, 2])
def test_every_element_up_to_rn_equals_dftd3(seed):
    """All reference data of H–Rn in use at once, over a spread of CNs (0 to ~19)."""
    atoms = element_cluster(seed)
    e_ref, g_ref, _ = dftd3_reference(atoms)
    e, g, _ = ours(atoms)
    assert e == pytest.approx(e_ref, rel=RTOL)
    assert max_rel(g, g_ref) < RTOL


@needs_dftd3
def test_every_functional_equals_dftd3():
    """Each parameter set against dftd3's own loading of it by name (its compiled table)."""
    atoms = element_cluster(1)
    for name in BJ_PARAMETERS:
        e, _, _ = ours(atoms, name)
        assert e == pytest.approx(dftd3_reference(atoms, name)[0], rel=RTOL), name


@needs_dftd3
@pytest.mark.parametrize("name", list(CRYSTALS))
def test_crystal_energy_forces_virial_equal_dftd3(name):
    """Hard cutoffs at dftd3's defaults (60 bohr two-body, 40 bohr CN) on both sides."""
    atoms = rattled(CRYSTALS[name](), seed=len(name))
    disp2, cn = D3_CUTOFF / Bohr, CN_CUTOFF / Bohr  # 60 and 40
    e_ref, g_ref, v_ref = dftd3_reference(atoms, disp2=disp2, cn=cn)
    e, g, v = ours(atoms, cutoff=disp2 * BOHR_2018, cn_cutoff=cn * BOHR_2018)
    assert e == pytest.approx(e_ref, rel=RTOL)
    assert max_rel(g, g_ref) < RTOL
    assert max_rel(v, v_ref) < RTOL
    if name == "si_diamond":
        # These are dftd3's own defaults.
        model = DispersionModel(atoms.numbers, atoms.positions / BOHR_2018,
                                atoms.cell.array / BOHR_2018, atoms.pbc)
        out = model.get_dispersion(RationalDampingParam(method="pbe", atm=False), grad=False)
        assert float(out["energy"]) * Hartree == pytest.approx(e_ref, rel=1e-12)
        # The default smooth switches (2 Å below each cutoff) move the total by ~1e-4.
        e_smooth = float(d3_energy(atoms.positions, atoms.numbers, atoms.cell.array))
        assert e_smooth == pytest.approx(e_ref, rel=3e-4)


# --- padding, list conventions, cutoffs ----------------------------------------------------------

def test_padding_pairs_change_nothing_and_give_no_nan():
    atoms = s22["Water_dimer"]
    n = len(atoms)
    nl = long_range_list(atoms.positions, None, np.zeros(3, bool), None)
    # A padding atom (Z = 0, on top of atom 0) and padding pairs: with itself (r = 0), with
    # real atoms, and a duplicate of a real pair.
    positions = np.vstack([atoms.positions, atoms.positions[:1]])
    numbers = np.append(atoms.numbers, 0)
    pad_i, pad_j = np.array([n, 0, n, 0]), np.array([n, n, 2, 1])
    centers = np.concatenate([nl.centers, pad_i])
    neighbours = np.concatenate([nl.neighbours, pad_j])
    shifts = np.zeros((len(centers), 3), np.int32)
    mask = np.arange(len(centers)) < len(nl.centers)
    params = d3_bj_parameters("pbe")

    def energy(pos, c, nb, s, m):
        return d3_energy_from_pairs(pos, jnp.zeros((3, 3)), jnp.asarray(numbers), c, nb, s, m,
                                    params, 4.0, 3.5, 1.0, 1.0)

    value_and_grad = jax.jit(jax.value_and_grad(energy))
    plain = value_and_grad(jnp.asarray(positions), nl.centers, nl.neighbours, nl.shifts,
                           np.ones(len(nl.centers), bool))
    padded = value_and_grad(jnp.asarray(positions), centers, neighbours, shifts, mask)
    assert float(padded[0]) == pytest.approx(float(plain[0]), rel=1e-14)
    np.testing.assert_allclose(padded[1], plain[1], rtol=0, atol=1e-14)
    assert np.all(padded[1][n] == 0.0)
    # Forward over reverse: forward-mode derivatives of the forces (the Hessian) stay finite.
    hessian = jax.jit(jax.jacfwd(jax.grad(energy)))(jnp.asarray(positions), centers,
                                                    neighbours, shifts, mask)
    assert np.isfinite(hessian).all() and np.all(hessian[n] == 0.0)

    # The pair functions alone: a padding pair at r = 0 with unknown Z and NaN CN.
    r, zi, zj = jnp.array([0.0, 2.5]), jnp.array([0, 6]), jnp.array([0, 8])
    cn = jnp.array([jnp.nan, 1.0])
    m = jnp.array([False, True])
    e_pair = d3_pair_energy(r, zi, zj, cn, cn, m, "pbe", cutoff=5.0)
    assert e_pair[0] == 0.0 and e_pair[1] < 0.0
    grads = jax.jit(jax.grad(lambda r, cn: jnp.sum(d3_pair_energy(r, zi, zj, cn, cn, m, "pbe",
                                                                  5.0)), argnums=(0, 1)))(r, cn)
    assert all(np.isfinite(g).all() and g[0] == 0.0 for g in grads)
    dcn = jax.jit(jax.grad(lambda r: jnp.sum(coordination_numbers(r, zi, zj, jnp.array([0, 1]),
                                                                  2, m))))(r)
    assert np.isfinite(dcn).all() and dcn[0] == 0.0


def test_full_and_half_lists_agree():
    atoms = molecule("CH3CH2OH")
    half = neighbour_list(atoms.positions, np.zeros((3, 3)), np.zeros(3, bool), 8.0, half=True)
    full = neighbour_list(atoms.positions, np.zeros((3, 3)), np.zeros(3, bool), 8.0)
    positions, z = jnp.asarray(atoms.positions), jnp.asarray(atoms.numbers)

    @functools.partial(jax.jit, static_argnames="is_half")
    def per_list(centers, neighbours, is_half):
        r = jnp.linalg.norm(positions[neighbours] - positions[centers], axis=1)
        mask = jnp.ones(len(r), bool)
        cn = coordination_numbers(r, z[centers], z[neighbours], centers, len(atoms), mask,
                                  neighbours if is_half else None, cutoff=7.0)
        e = d3_pair_energy(r, z[centers], z[neighbours], cn[centers], cn[neighbours], mask,
                           d3_bj_parameters("pbe"), cutoff=7.0)
        return cn, jnp.sum(e)

    cn_half, e_half = per_list(half.centers, half.neighbours, True)
    cn_full, e_full = per_list(full.centers, full.neighbours, False)
    np.testing.assert_allclose(cn_half, cn_full, rtol=1e-13)
    assert float(e_half) == pytest.approx(0.5 * float(e_full), rel=1e-13)


@pytest.mark.parametrize("cn_cutoff", [6.0, 5.0])
def test_energy_continuous_as_pairs_cross_the_cutoffs(cn_cutoff):
    """A molecule moved so that one pair crosses the list's cutoff (6 Å; the CN cutoff at the
    same 6 Å or inside it): with the switches the energy does not notice the list changing;
    hard cutoffs (width 0) jump there."""
    cutoff = 6.0
    a, b = s22["Water_dimer"][:3], s22["Water_dimer"][3:]
    b.positions += [3.0, 0.0, 0.0]

    def dimer(t: float) -> Atoms:
        moved = b.copy()
        moved.positions += [t, 0.0, 0.0]
        return a + moved

    # The translation t at which the O(a)–O(b) pair is exactly `cutoff` apart.
    d = b.positions[0] - a.positions[0]
    t0 = -d[0] + np.sqrt(cutoff**2 - d[1] ** 2 - d[2] ** 2)
    smooth = dict(cutoff=cutoff, cn_cutoff=cn_cutoff, width=1.0, cn_width=1.0)
    hard = dict(cutoff=cutoff, cn_cutoff=cn_cutoff, width=0.0, cn_width=0.0)
    for eps in (1e-6, 1e-9):
        below, above = dimer(t0 - eps), dimer(t0 + eps)
        # The list built for the cutoff changes between the two (the pair enters it) ...
        sizes = [len(neighbour_list(x.positions, np.zeros((3, 3)), np.zeros(3, bool), cutoff,
                                    half=True).centers) for x in (below, above)]
        assert sizes[0] == sizes[1] + 1
        (e_below, g_below, _), (e_above, _, _) = ours(below, **smooth), ours(above, **smooth)
        # ... but the energy moves only as its force says over 2 eps (no step), and equals
        # the energy over a longer list, a smooth function of the positions.
        slope = np.sum(g_below[3:, 0])  # dE/dt
        assert abs(e_above - e_below - 2 * eps * slope) < 1e-14
        for atoms, e_list in ((below, e_below), (above, e_above)):
            assert ours(atoms, **smooth, list_cutoff=cutoff + 3.0)[0] == pytest.approx(
                e_list, rel=1e-13)
        # Hard cutoffs (width 0) step there: the test would see a step.
        assert abs(ours(below, **hard)[0] - ours(above, **hard)[0]) > 1e-6
    # The convenience function builds its own list per call, with the same result.
    for atoms in (below, above):
        e_plain = float(d3_energy(atoms.positions, atoms.numbers, cutoff=cutoff,
                                  cn_cutoff=cn_cutoff, cutoff_width=1.0, cn_cutoff_width=1.0))
        assert e_plain == pytest.approx(ours(atoms, **smooth)[0], rel=1e-13)
