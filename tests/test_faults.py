"""Fault catalogue (issue 31): bad input and failures end with one readable ``error:`` line (no
traceback), a non-zero exit code, and nothing lost. ``docs/faults.md`` lists every case with
what the user sees; slow cases covered elsewhere (kill -9 and resume) are listed there too.

The commands run in-process through ``so3krates.cli.main`` (the console script's entry point,
which returns the exit code); one case runs the installed ``so3krates`` script itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fault_helpers import FullDisk, assert_error, cli, ethanol, labelled, write
from ase.build import molecule

from conftest import TINY_TRAIN
from so3krates.cli import main
from so3krates.datasets import shipped_dataset_path
from so3krates.model_io import ModelFileError, load_model


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def train_args(output: Path, *extra: str) -> list[str]:
    """The ``train`` command of the ``trained_model_dir`` fixture (to resume a copy of it)."""
    return ["train", "--data", str(shipped_dataset_path()),
            *[a for s in TINY_TRAIN for a in ("--set", s)], "--output", str(output), *extra]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def model_dir(trained_model_dir, tmp_path) -> Path:
    """A copy of the session's tiny trained model, free to damage."""
    return copy_model(trained_model_dir, tmp_path / "model")


@pytest.fixture
def start(tmp_path) -> Path:
    return write(tmp_path / "ethanol.xyz", ethanol())


# --------------------------------------------------------------------------------------------
# train: bad data, bad settings, damaged run directories, a full disk
# --------------------------------------------------------------------------------------------


def test_train_missing_data_file(capsys, tmp_path):
    assert_error(cli(capsys, "train", "--data", tmp_path / "nope.xyz", "--output", tmp_path / "m"),
                 "nope.xyz", "no such file")


def test_train_empty_data_file(capsys, tmp_path):
    (tmp_path / "empty.xyz").write_text("")
    assert_error(cli(capsys, "train", "--data", tmp_path / "empty.xyz", "--output", tmp_path / "m"),
                 "empty.xyz", "empty")


def test_train_malformed_data_file(capsys, tmp_path):
    (tmp_path / "junk.xyz").write_text("this is not\nan xyz file\n")
    assert_error(cli(capsys, "train", "--data", tmp_path / "junk.xyz", "--output", tmp_path / "m"),
                 "junk.xyz", "could not read")


@pytest.mark.parametrize("label", ["nan_energy", "inf_forces"])
def test_train_nan_or_inf_labels(capsys, tmp_path, label):
    frames = [labelled(ethanol(), energy=-1.0) for _ in range(4)]
    if label == "nan_energy":
        frames[2] = labelled(frames[2], energy=np.nan)
    else:
        forces = np.zeros((len(frames[1]), 3))
        forces[3, 1] = np.inf
        frames[1] = labelled(frames[1], forces=forces)
    path = write(tmp_path / f"{label}.xyz", frames)
    line = assert_error(cli(capsys, "train", "--data", path, "--output", tmp_path / "m"),
                        f"{label}.xyz", "NaN or inf")
    assert ("structure 2" if label == "nan_energy" else "structure 1") in line


def test_train_unknown_unit(capsys, tmp_path):
    assert_error(cli(capsys, "train", "--data", shipped_dataset_path(), "--set",
                     "data.energy_unit=kcal", "--output", tmp_path / "m"),
                 "unknown energy unit 'kcal'", "kcal/mol")


def test_train_overlapping_atoms(capsys, tmp_path):
    bad = ethanol()
    bad.positions[4] = bad.positions[1] + 0.01
    path = write(tmp_path / "overlap.xyz", [labelled(ethanol()), labelled(bad)])
    assert_error(cli(capsys, "train", "--data", path, "--output", tmp_path / "m"),
                 "structure 1: atoms 1 and 4 overlap")


def test_train_periodic_cell_without_volume(capsys, tmp_path):
    flat = ethanol()
    flat.cell, flat.pbc = [[6.0, 0, 0], [0, 6.0, 0], [3.0, 3.0, 0]], True
    path = write(tmp_path / "flat.xyz", [labelled(flat)] * 2)
    assert_error(cli(capsys, "train", "--data", path, "--output", tmp_path / "m"),
                 "structure 0 is periodic but its cell has no volume")


def test_train_unknown_setting_is_one_line(capsys, tmp_path):
    line = assert_error(cli(capsys, "train", "--set", "model.featurs=64", "--output", tmp_path / "m"),
                        "invalid configuration", "model.featurs", "Extra inputs are not permitted")
    assert "pydantic.dev" not in line


def test_train_config_file_is_not_yaml(capsys, tmp_path):
    (tmp_path / "bad.yaml").write_text("model: [features\n  cutoff: 4")
    assert_error(cli(capsys, "train", tmp_path / "bad.yaml", "--output", tmp_path / "m"),
                 "bad.yaml: not valid YAML", "line 2")


def test_train_split_larger_than_the_data(capsys, tmp_path):
    assert_error(cli(capsys, "train", "--data", shipped_dataset_path(), "--n-train", "5000",
                     "--output", tmp_path / "m"),
                 "split needs 5000 train", "the data has only 800")


def test_train_resume_with_other_settings_is_refused(capsys, model_dir):
    before = snapshot(model_dir)
    assert_error(cli(capsys, *train_args(model_dir, "--set", "model.cutoff=3.5")),
                 "model.cutoff=5.0", "not 3.5", "use another --output")
    assert snapshot(model_dir) == before


@pytest.mark.parametrize("damage", ["truncated", "other_version"])
def test_train_resume_from_a_damaged_checkpoint(capsys, model_dir, damage):
    from flax import serialization

    latest = model_dir / "checkpoints" / "latest.msgpack"
    blob = latest.read_bytes()
    if damage == "truncated":
        latest.write_bytes(blob[: len(blob) // 3])
        words = ("truncated or corrupt", "latest.msgpack")
    else:
        raw = serialization.msgpack_restore(blob)
        raw["__format__"] = "so3krates-checkpoint/99"
        latest.write_bytes(serialization.msgpack_serialize(raw))
        words = ("so3krates-checkpoint/99", "another so3krates version", "latest.msgpack")
    before = snapshot(model_dir)
    line = assert_error(cli(capsys, *train_args(model_dir)), "cannot resume training", *words)
    assert "Unpack" not in line and "incomplete input" not in line
    assert snapshot(model_dir) == before  # nothing overwritten: the run can still be rescued


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """The trainer's checkpoint write on a full disk: an OSError naming the file (the CLI
    exits 1 with it, see the MD case below), the previous checkpoint intact and loadable, no
    temporary file left."""
    from so3krates.training.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoints" / "latest.msgpack"
    template = {"params": np.zeros(4), "host": {"step": np.int64(0)}}
    save_checkpoint(path, {"params": np.arange(4.0), "host": {"step": np.int64(20)}})
    before = path.read_bytes()
    monkeypatch.setattr("so3krates.fileio.os.fdopen", FullDisk)
    with pytest.raises(OSError, match=r"could not write .*latest.msgpack: No space left on device"):
        save_checkpoint(path, {"params": np.ones(4), "host": {"step": np.int64(40)}})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["latest.msgpack"]
    assert int(load_checkpoint(path, template)["host"]["step"]) == 20


# --------------------------------------------------------------------------------------------
# Model directories: missing, truncated, corrupt, from another version (evaluate, calculator)
# --------------------------------------------------------------------------------------------


def test_model_dir_missing(capsys, tmp_path):
    assert_error(cli(capsys, "evaluate", tmp_path / "nowhere"),
                 "is not a model directory", "model.yaml is missing")


def test_params_file_missing(capsys, model_dir):
    (model_dir / "params.msgpack").unlink()
    assert_error(cli(capsys, "evaluate", model_dir), "params.msgpack is missing")


def test_truncated_params_fail_the_checksum(capsys, model_dir):
    params = model_dir / "params.msgpack"
    params.write_bytes(params.read_bytes()[:-100])
    line = assert_error(cli(capsys, "evaluate", model_dir),
                        str(params), "is corrupt", "SHA-256 checksum differs")
    assert "Unpack" not in line and "incomplete input" not in line


def test_old_model_dir_without_checksum_still_loads(model_dir):
    meta = model_dir / "model.yaml"
    text = meta.read_text()
    assert "params_sha256:" in text  # written by this version
    meta.write_text("".join(l for l in text.splitlines(True) if not l.startswith("params_sha256")))
    model = load_model(model_dir, dtype="float64")
    assert model.elements == [1, 6, 8]


def test_corrupt_params_without_checksum(capsys, model_dir):
    meta = model_dir / "model.yaml"
    meta.write_text("".join(l for l in meta.read_text().splitlines(True)
                            if not l.startswith("params_sha256")))
    params = model_dir / "params.msgpack"
    params.write_bytes(params.read_bytes()[:2000])
    line = assert_error(cli(capsys, "evaluate", model_dir),
                        str(params), "truncated or corrupt", "not a readable parameter file")
    assert "Unpack" not in line


def test_model_yaml_is_not_yaml(capsys, model_dir):
    (model_dir / "model.yaml").write_text("format: [so3krates\n  model: 1")
    assert_error(cli(capsys, "evaluate", model_dir), "model.yaml: not valid YAML")


def test_model_of_another_format_version(capsys, model_dir):
    meta = model_dir / "model.yaml"
    meta.write_text(meta.read_text().replace("so3krates-model/1", "so3krates-model/7"))
    assert_error(cli(capsys, "evaluate", model_dir),
                 "so3krates-model/7", "another so3krates version", "reads so3krates-model/1")


def test_params_that_do_not_fit_model_yaml(capsys, model_dir):
    """model.yaml edited (features 16 -> 32) but the parameters not: refused at load with the
    parameter's name, not a shape error from inside the first prediction."""
    meta = model_dir / "model.yaml"
    meta.write_text(meta.read_text().replace("features: 16", "features: 32"))
    assert_error(cli(capsys, "md", model_dir, shipped_dataset_path(), "--steps", "10",
                     "--output", model_dir / "md.xyz"),
                 "params.msgpack does not match model.yaml", "has shape (")


def test_evaluate_unknown_elements(capsys, trained_model_dir, tmp_path):
    path = write(tmp_path / "nacl.xyz", [labelled(molecule("NaCl"))] * 3)
    assert_error(cli(capsys, "evaluate", trained_model_dir, path, "--split", "all",
                     "--json", tmp_path / "e.json"),
                 "elements [11, 17] were never seen in training", "knows [1, 6, 8]")
    assert not (tmp_path / "e.json").exists()


def test_console_script_exit_code_and_one_line(tmp_path, trained_model_dir):
    """The installed ``so3krates`` script: a truncated params file exits 2 with one line on
    stdout and nothing on stderr."""
    model = copy_model(trained_model_dir, tmp_path / "model")
    params = model / "params.msgpack"
    params.write_bytes(params.read_bytes()[:100])
    script = Path(sys.executable).with_name("so3krates")
    res = subprocess.run([str(script), "evaluate", str(model)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stdout.splitlines() == [res.stdout.strip()] and res.stdout.startswith("error:")
    assert "params.msgpack is corrupt" in res.stdout and res.stderr == "", res.stderr


def test_unknown_choice_is_an_argparse_error(capsys, trained_model_dir, start):
    with pytest.raises(SystemExit) as exc:
        main(["md", str(trained_model_dir), str(start), "--ensemble", "nvx"])
    assert exc.value.code == 2
    assert "invalid choice: 'nvx'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# md, relax, explore: bad structures, conflicting options, an exploding run, a full disk
# --------------------------------------------------------------------------------------------


def test_md_missing_structure_file(capsys, trained_model_dir, tmp_path):
    assert_error(cli(capsys, "md", trained_model_dir, tmp_path / "none.xyz"),
                 "none.xyz does not exist")


def test_relax_empty_structure_file(capsys, trained_model_dir, tmp_path):
    (tmp_path / "empty.xyz").write_text("")
    assert_error(cli(capsys, "relax", trained_model_dir, tmp_path / "empty.xyz", "--output",
                     tmp_path / "r.xyz"), "empty.xyz", "Empty file")


def test_md_unknown_elements(capsys, trained_model_dir, tmp_path):
    path = write(tmp_path / "nacl.xyz", molecule("NaCl"))
    assert_error(cli(capsys, "md", trained_model_dir, path, "--output", tmp_path / "x.xyz"),
                 "elements [11, 17] were never seen in training")
    assert not (tmp_path / "x.xyz").exists()


@pytest.mark.parametrize("command", ["md", "relax"])
def test_overlapping_atoms_are_refused(capsys, trained_model_dir, tmp_path, command):
    """Two atoms on one spot give zero or NaN forces: relax used to report them converged."""
    bad = ethanol()
    bad.positions[2] = bad.positions[0]
    path = write(tmp_path / "overlap.xyz", bad)
    assert_error(cli(capsys, command, trained_model_dir, path, "--output", tmp_path / "o.xyz"),
                 "overlap.xyz, structure 0: atoms 0 and 2 overlap (0.000 Å apart)")
    assert not (tmp_path / "o.xyz").exists()


def test_md_nan_positions(capsys, trained_model_dir, tmp_path):
    bad = ethanol()
    bad.positions[3, 1] = np.nan
    path = write(tmp_path / "nan.xyz", bad)
    assert_error(cli(capsys, "md", trained_model_dir, path, "--output", tmp_path / "o.xyz"),
                 "nan.xyz, structure 0: positions contain NaN or inf")


@pytest.mark.parametrize("command", ["md", "relax"])
def test_periodic_cell_without_volume(capsys, trained_model_dir, tmp_path, command):
    flat = ethanol()
    flat.cell, flat.pbc = [[6.0, 0, 0], [0, 6.0, 0], [0, 0, 0]], True
    path = write(tmp_path / "flat.xyz", flat)
    assert_error(cli(capsys, command, trained_model_dir, path, "--output", tmp_path / "o.xyz"),
                 "flat.xyz, structure 0: degenerate cell")


@pytest.mark.parametrize("options, words", [
    (["--steps", "15", "--stride", "10"], ["--steps (15) must be a multiple of --stride (10)"]),
    (["--restart"], ["restart file", "does not exist"]),
    (["--ensemble", "npt"], ["NPT needs a cell periodic in all three directions"]),
    (["--output", "md.pdb"], ["unsupported trajectory extension '.pdb'"]),
], ids=["steps-stride", "restart-without-run", "npt-molecule", "output-format"])
def test_md_conflicting_options(capsys, trained_model_dir, start, tmp_path, monkeypatch,
                                options, words):
    monkeypatch.chdir(tmp_path)
    assert_error(cli(capsys, "md", trained_model_dir, start, "--steps", "20", "--stride", "10",
                     "--output", "md.xyz", *options), *words)
    assert not (tmp_path / "md.xyz").exists()


def test_md_refuses_to_overwrite_a_run(capsys, trained_model_dir, start, tmp_path):
    out = tmp_path / "md.xyz"
    out.write_text("an earlier run\n")
    assert_error(cli(capsys, "md", trained_model_dir, start, "--steps", "20", "--output", out),
                 "md.xyz exists; pass --restart")
    assert out.read_text() == "an earlier run\n"


def test_explore_conflicting_options(capsys, trained_model_dir, start, tmp_path):
    assert_error(cli(capsys, "explore", trained_model_dir, start, "--batch", "0",
                     "--output", tmp_path / "ex"), "batch >= 1")


def test_exploding_md_stops_and_keeps_the_frames_before(capsys, trained_model_dir, start,
                                                         tmp_path):
    """At 20,000 K bonds break: the stability monitor stops the run (exit 3) and the frames
    before the instability are kept, every one of them intact and stable."""
    import json

    from so3krates.md.trajectory_read import read_trajectory

    out = tmp_path / "hot.xyz"
    code, text = cli(capsys, "md", trained_model_dir, start, "--temperature", "20000",
                     "--steps", "2000", "--stride", "2", "--chunk", "5", "--timestep", "1.0",
                     "--dtype", "float64", "--output", out, "--no-progress")
    assert code == 3, text
    assert "unstable" in text and "Traceback" not in text
    summary = json.loads((tmp_path / "hot.xyz.summary.json").read_text())
    assert not summary["stable"] and summary["steps"] < 2000
    assert summary["frames"] > 0
    traj = read_trajectory(out)
    assert traj.n_frames == summary["frames"]
    assert np.isfinite(traj.positions).all()


def test_md_full_disk_then_restart_loses_nothing(capsys, trained_model_dir, start, tmp_path,
                                                 monkeypatch):
    """A full disk while saving the second restart file: exit 1 with one line, the first
    restart file intact. Half a frame is then appended to the trajectory (what a kill -9
    mid-write leaves). A restart with another timestep is refused and changes nothing;
    ``--restart`` drops everything after the restart point and the run ends with every frame
    once, in order, the frames before the restart point untouched."""
    from so3krates.md import run as md_run
    from so3krates.md.restart import load_state
    from so3krates.md.trajectory_read import read_trajectory

    out = tmp_path / "md.xyz"
    state = tmp_path / "md.xyz.restart.npz"
    common = [trained_model_dir, start, "--steps", "60", "--stride", "10", "--chunk", "2",
              "--dtype", "float64", "--no-monitor", "--no-progress", "--output", out]
    real_save = md_run.save_state
    saves = []

    def save_then_full_disk(*args, **kw):  # the second restart file hits a full disk
        saves.append(1)
        if len(saves) == 2:
            monkeypatch.setattr("so3krates.fileio.os.fdopen", FullDisk)
        return real_save(*args, **kw)

    monkeypatch.setattr(md_run, "save_state", save_then_full_disk)
    assert_error(cli(capsys, "md", *common), "could not write", "md.xyz.restart.npz",
                 "No space left on device", code=1)
    monkeypatch.undo()
    assert load_state(state)[1]["frames"] == 2  # the first restart point, intact
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    first = read_trajectory(out)
    assert first.n_frames == 4  # written before the restart file failed
    with open(out, "a") as fh:
        fh.write("9\nProperties=species:S:1:pos:R:3 time_fs=25.0\nC 0.0 0.1")

    before = out.read_bytes()
    assert_error(cli(capsys, "md", *common, "--restart", "--timestep", "1.0"),
                 "restart with a different timestep (0.5 -> 1.0)")
    assert out.read_bytes() == before

    code, text = cli(capsys, "md", *common, "--restart")
    assert code == 0 and "restart from step 20 (2 frames kept, 2 dropped)" in text, text
    traj = read_trajectory(out)
    np.testing.assert_allclose(traj.time, 5.0 * np.arange(1, 7))  # steps 10..60 at 0.5 fs
    np.testing.assert_array_equal(traj.positions[:2], first.positions[:2])
    assert load_state(state)[1]["frames"] == 6


# --------------------------------------------------------------------------------------------
# analyze: missing, malformed and corrupt trajectories
# --------------------------------------------------------------------------------------------


def test_analyze_missing_trajectory(capsys, tmp_path):
    assert_error(cli(capsys, "analyze", tmp_path / "none.xyz"), "none.xyz does not exist")


def test_analyze_malformed_trajectory(capsys, tmp_path):
    (tmp_path / "junk.xyz").write_text("not\na trajectory\n")
    assert_error(cli(capsys, "analyze", tmp_path / "junk.xyz"),
                 "cannot read trajectory", "junk.xyz")


def test_analyze_corrupt_hdf5(capsys, tmp_path):
    (tmp_path / "md.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    assert_error(cli(capsys, "analyze", tmp_path / "md.h5"), "md.h5 is not a readable HDF5 file")


# --------------------------------------------------------------------------------------------
# The ASE calculator
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model64(trained_model_dir):
    return load_model(trained_model_dir, dtype="float64")


def test_calculator_missing_model_dir(tmp_path):
    from so3krates.calculator import So3kratesCalculator

    with pytest.raises(ModelFileError, match="is not a model directory: model.yaml is missing"):
        So3kratesCalculator(tmp_path)


def test_calculator_unknown_element(model64):
    atoms = ethanol()
    atoms.numbers[0] = 79
    atoms.calc = model64.calculator()
    with pytest.raises(ValueError, match=r"elements \[79\] were never seen in training"):
        atoms.get_potential_energy()


def test_calculator_nan_positions(model64):
    atoms = ethanol()
    atoms.positions[1, 2] = np.nan
    atoms.calc = model64.calculator()
    with pytest.raises(ValueError, match="positions contain NaN or inf"):
        atoms.get_forces()


@pytest.mark.parametrize("periodic", [False, True], ids=["molecule", "periodic"])
def test_calculator_overlapping_atoms(model64, periodic):
    """Two atoms on one spot give a NaN energy: an error naming them, not NaN forces."""
    atoms = ethanol()
    atoms.positions[5] = atoms.positions[1]
    if periodic:
        atoms.cell, atoms.pbc = [12.0, 12.0, 12.0], True
    atoms.calc = model64.calculator()
    with pytest.raises(ValueError, match="energy is not finite: atoms 1 and 5 overlap"):
        atoms.get_potential_energy()


@pytest.mark.parametrize("prop", ["energy", "stress"])
def test_calculator_cell_without_volume(model64, prop):
    atoms = ethanol()
    atoms.cell, atoms.pbc = [[6.0, 0, 0], [0, 6.0, 0], [0, 0, 0]], True
    atoms.calc = model64.calculator()
    with pytest.raises(ValueError, match="degenerate cell|has no volume"):
        atoms.get_stress() if prop == "stress" else atoms.get_potential_energy()


def test_calculator_stress_of_a_molecule(model64):
    from ase.calculators.calculator import PropertyNotImplementedError

    atoms = ethanol()
    atoms.calc = model64.calculator()
    with pytest.raises(PropertyNotImplementedError, match="stress needs a periodic cell"):
        atoms.get_stress()
