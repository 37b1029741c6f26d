#!/usr/bin/env python
"""Write ``src/so3krates/terms/data/d3_reference.npz``, the DFT-D3 reference data of
``so3krates.terms.d3``, from the ``torch-dftd`` wheel (MIT licence) on PyPI.

The wheel ships Grimme's D3 reference values as a plain NumPy archive,
``torch_dftd/nn/params/dftd3_params.npz`` (arrays only, read here with
``allow_pickle=False``; no torch needed). This script keeps what D3(BJ) needs, in a compact,
per-element form:

* ``ref_count`` (95,) int8: number of reference systems of each element (0 for Z = 0).
* ``ref_cn`` (95, 5) float64: their coordination numbers, NaN in unused slots.
* ``c6_ref`` (R, R) float64, R = Σ ref_count = 254: C6 (Hartree bohr⁶) between every pair of
  reference systems (symmetric); the references of element Z are rows ``sum(ref_count[:Z])``
  onwards, in the order of ``ref_cn[Z]``. float64: float32 would round each value by up to
  6e-8 relative, which already shows as 3e-7 relative in the forces of a rattled Si crystal
  against ``dftd3`` (3e-8 in float64), too close to the 1e-6 the tests ask for; float64 costs
  46 kB more in the compressed file.
* ``rcov`` (95,) float64: D3's covalent radii in Å (Pyykkö and Atsumi 2009, metals reduced by
  10 %), *before* the factor k2 = 4/3; NaN at Z = 0.
* ``r4_over_r2`` (95,) float64: the atomic ⟨r⁴⟩/⟨r²⟩ expectation values (bohr²) of D3;
  ``sqrt(Q) = sqrt(0.5 sqrt(Z) ⟨r⁴⟩/⟨r²⟩)`` gives C8 = 3 C6 sqrt(Q_i Q_j). NaN at Z = 0.

torch-dftd stores the covalent radii (already × 4/3, in bohr) and sqrt(Q) only to float32
precision; Grimme's tables give the radii in Å to 2 decimals and ⟨r⁴⟩/⟨r²⟩ to 4 decimals, and
both are recovered exactly here by rounding (the script checks that every value lies within
1e-5 of that grid, far inside the half step, so the rounding is unambiguous). C6 values and
reference CNs are Grimme's 4-decimal numbers already.

Usage::

    python scripts/make_d3_reference.py                       # pip-downloads torch-dftd 0.5.3
    python scripts/make_d3_reference.py --source torch_dftd-0.5.3-py3-none-any.whl
    python scripts/make_d3_reference.py --source dftd3_params.npz --output /tmp/d3.npz

The output is deterministic (NumPy writes fixed zip timestamps).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "torch-dftd==0.5.3"
MEMBER = "torch_dftd/nn/params/dftd3_params.npz"
# sha256 of MEMBER in torch_dftd-0.5.3-py3-none-any.whl: the numbers this script was checked on.
NPZ_SHA256 = "52b7b35a957df55b813035ffde3a6b5a41dec585bdb1e281fb8ba67a729f3d92"
AUTOANG = 0.52917726  # Å per bohr in Grimme's dftd3 program, which made torch-dftd's radii
MAX_REF = 5
Z_MAX = 94
OUTPUT = (Path(__file__).resolve().parents[1] / "src" / "so3krates" / "terms" / "data"
          / "d3_reference.npz")


def _read_source(source: Path | None) -> bytes:
    """The bytes of torch-dftd's ``dftd3_params.npz``: from ``source`` (the wheel or the npz
    itself), else from a fresh ``pip download`` of the wheel (no dependencies, not installed)."""
    if source is not None and source.suffix == ".npz":
        return source.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        if source is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary",
                            ":all:", "-d", tmp, WHEEL], check=True)
            source = next(Path(tmp).glob("torch_dftd-*.whl"))
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(MEMBER)


def _recover_grid(values: np.ndarray, decimals: int, what: str) -> np.ndarray:
    """``values`` rounded to ``decimals``, after checking they lie within 1e-5 of that grid
    (float32 noise), far inside the half step: the rounding restores the published numbers."""
    rounded = np.round(values, decimals)
    worst = float(np.max(np.abs(values - rounded)))
    if worst > 1e-5:
        raise SystemExit(f"{what}: a value lies {worst:.2e} off the {decimals}-decimal grid; "
                         "cannot restore the published numbers")
    return rounded


def _require(condition, message: str) -> None:
    """Stop (also under ``python -O``) when the source is not what this script expects."""
    if not condition:
        raise SystemExit(f"unexpected source data: {message}")


def convert(raw: bytes) -> dict[str, np.ndarray]:
    """The arrays of ``d3_reference.npz`` from the bytes of torch-dftd's npz, checked."""
    digest = hashlib.sha256(raw).hexdigest()
    if digest != NPZ_SHA256:
        print(f"warning: {MEMBER} has sha256 {digest}, not the checked {NPZ_SHA256}",
              file=sys.stderr)
    src = np.load(io.BytesIO(raw), allow_pickle=False)
    c6ab = np.asarray(src["c6ab"], dtype=np.float64)  # (95, 95, 5, 5, [C6, CN_i, CN_j]), -1 unused
    z_all = np.arange(1, Z_MAX + 1)

    # Reference CNs of element Z: listed with every partner element; check they agree.
    ref_count = np.zeros(Z_MAX + 1, np.int8)
    ref_cn = np.full((Z_MAX + 1, MAX_REF), np.nan)
    for z in z_all:
        cn_i = c6ab[z, 1:, :, :, 1]  # (94 partners, 5 refs of z, 5 refs of the partner)
        valid = cn_i[0, :, 0] > -0.5  # H, the first partner, has a reference 0
        n = int(valid.sum())
        _require(valid[:n].all(), f"Z={z}: references not contiguous")
        for j in z_all:
            nj = int((c6ab[j, 1, :, 0, 1] > -0.5).sum())
            _require(np.array_equal(c6ab[z, j, :n, :nj, 1], np.repeat(cn_i[0, :n, :1], nj, 1)),
                     f"Z={z}: reference CNs differ with partner Z={j}")
            _require(np.all(c6ab[z, j, n:, :, 0] == -1) and np.all(c6ab[z, j, :, nj:, 0] == -1),
                     f"Z={z}, {j}: values in unused reference slots")
        ref_count[z] = n
        ref_cn[z, :n] = cn_i[0, :n, 0]

    offset = np.concatenate([[0], np.cumsum(ref_count)])
    total = int(offset[-1])
    c6 = np.full((total, total), np.nan)
    for zi in z_all:
        for zj in z_all:
            ni, nj = ref_count[zi], ref_count[zj]
            block = c6ab[zi, zj, :ni, :nj]
            _require(np.array_equal(block[..., 2], np.broadcast_to(ref_cn[zj, :nj], (ni, nj))),
                     f"Z={zi}, {zj}: partner reference CNs differ")
            c6[offset[zi]:offset[zi] + ni, offset[zj]:offset[zj] + nj] = block[..., 0]
    _require(np.all(c6 > 0) and np.array_equal(c6, c6.T), "C6 not positive and symmetric")

    rcov = np.full(Z_MAX + 1, np.nan)
    rcov[1:] = _recover_grid(src["rcov"][1:] * 0.75 * AUTOANG, 2, "covalent radii (Å)")
    r4r2 = np.full(Z_MAX + 1, np.nan)
    r4r2[1:] = _recover_grid(2.0 * src["r2r4"][1:] ** 2 / np.sqrt(z_all), 4, "<r4>/<r2>")
    # The restored values reproduce torch-dftd's derived ones to its float32 precision.
    _require(np.allclose(4.0 / 3.0 * rcov[1:] / AUTOANG, src["rcov"][1:], rtol=1e-6, atol=0),
             "restored covalent radii")
    _require(np.allclose(np.sqrt(0.5 * r4r2[1:] * np.sqrt(z_all)), src["r2r4"][1:], rtol=1e-6,
                         atol=0), "restored <r4>/<r2>")

    print(f"{Z_MAX} elements, {total} reference systems")
    return {"ref_count": ref_count, "ref_cn": ref_cn, "c6_ref": c6, "rcov": rcov,
            "r4_over_r2": r4r2}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, help="torch-dftd wheel or its dftd3_params.npz "
                        f"(default: pip download {WHEEL})")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    tables = convert(_read_source(args.source))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, **tables)
    print(f"wrote {args.output} ({args.output.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
