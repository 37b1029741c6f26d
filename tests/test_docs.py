"""The documentation cannot rot: every code block of the README and of ``docs/`` runs here.

Each page runs in its own working directory (the README's blocks are those of
``docs/getting-started.md`` and run there), its blocks in order (a model trained in one
block is used by the next): Python blocks in one namespace per page, shell blocks through
bash with ``set -e``. The directory holds what the pages assume a user has: ``mydata.extxyz``
(the shipped ethanol set), ``start.xyz`` (its first structure), ``runs/model`` and
``runs/mymodel`` (a trained model) and ``cu_model`` (a periodic one) where a page uses them
without training them, and a ``.venv`` link. The tutorials run in the order of their index,
in one directory per group: a tutorial that trains its own model starts a new group (the
others use the model of the group's first), and groups run side by side.

So that the suite stays short, shell commands run with small budgets (``QUICK``): the
training commands get a tiny network (fine-tuning runs, ``--init-from``, keep the initial
model's) and a step limit, MD fewer steps, the thermal
conductivity shorter runs. Nothing else is changed; ``make`` lines are not run (this test is
itself run by ``make test``). YAML blocks that look like a configuration are validated.
See docs/contributing-docs.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN = {"python", "bash"}
NOT_CODE = {"text", "yaml", "bibtex"}  # printed output, configuration, citations
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)

# Budgets of the shell commands in the test (the pages show the real ones).
# Training: the tiny network of conftest.TINY_TRAIN at a constant rate, good enough for the
# pages' MD, relaxations and minima search to run stably.
QUICK_TRAIN = ["model.features=16", "model.num_layers=1", "model.num_radial=8",
               "model.degrees=[1,2]", "training.batch_size=4", "training.max_steps=800",
               "training.valid_every=200", "training.decay_steps=100000",
               "training.progress=false"]
# command -> {option: the test's value, as a function of the page's (None: not given)}
QUICK_OPTIONS = {
    "md": {"--steps": lambda v: str(max(20, int(v) // 5000)) if v else "20"},
    "explore": {"--quenches": lambda v: "2", "--quench-every": lambda v: "20",
                "--equilibration": lambda v: "20"},
    "thermal-conductivity": {"--runs": lambda v: "2", "--production": lambda v: "0.2",
                             "--equilibration": lambda v: "0.1", "--max-lag": lambda v: "0.05"},
}
QUICK_APPEND = {"train": [a for s in QUICK_TRAIN for a in ("--set", s)]}


def code_blocks(page: Path) -> list[tuple[str, str]]:
    """``(language, code)`` of each fenced block at the top level of a Markdown page."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(page.read_text())]


def logical_lines(script: str) -> list[str]:
    return script.replace("\\\n", " ").splitlines()


def split_comment(line: str) -> tuple[str, str]:
    """A shell line and its trailing ``# comment`` (outside quotes)."""
    quote = None
    for i, c in enumerate(line):
        if c in "'\"" and quote in (None, c):
            quote = None if quote else c
        elif c == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i:]
    return line, ""


def quick(line: str) -> str:
    """The line with the test's budgets (see ``QUICK_*``) if it runs a ``so3krates`` command."""
    code, _ = split_comment(line)
    m = re.search(r"so3krates\s+([\w-]+)", code)
    if not m:
        return code
    command = m.group(1)
    words = code.split()
    background = words[-1] == "&"
    words = words[:-1] if background else words
    for option, value in QUICK_OPTIONS.get(command, {}).items():
        if option in words:
            i = words.index(option)
            words[i + 1] = value(words[i + 1])
        else:
            words += [option, value(None)]
    append = QUICK_APPEND.get(command, [])
    if "--init-from" in words:  # fine-tuning: the network is the initial model's, the budget ours
        append = [a for s in QUICK_TRAIN if not s.startswith("model.") for a in ("--set", s)]
    words += append
    return " ".join(words) + (" &" if background else "")


def shell_script(code: str) -> str:
    lines = [quick(line) for line in logical_lines(code)]
    prelude = ["set -euo pipefail", 'make() { echo "not run here: make $*"; }']
    return "\n".join([*prelude, *lines, "wait"]) + "\n"


def trained_outputs(page_text: str) -> set[str]:
    """Directories the page's own ``so3krates train`` commands write."""
    lines = logical_lines(page_text)
    return {m.group(1) for line in lines if "so3krates train" in line
            for m in [re.search(r"--output\s+(\S+)", line)] if m}


def prepare_directory(directory: Path, pages: list[Path], request) -> None:
    """What the pages assume a user has; trained models only where the pages use them and do
    not train them themselves (fixtures of conftest.py)."""
    from ase.io import read, write

    from so3krates.datasets import shipped_dataset_path

    data = shipped_dataset_path()
    shutil.copy(data, directory / "mydata.extxyz")
    write(directory / "start.xyz", read(data, index=0))
    (directory / ".venv").symlink_to(Path(sys.prefix))
    (directory / "runs").mkdir()
    text = "\n".join(page.read_text() for page in pages)
    trains = trained_outputs(text)
    for name, fixture in (("runs/model", "trained_model_dir"), ("runs/mymodel", "trained_model_dir"),
                          ("cu_model", "trained_cu_model_dir")):
        if name in text and name not in trains:
            shutil.copytree(request.getfixturevalue(fixture), directory / name)


def run_page(page: Path, directory: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MPLBACKEND": "Agg"}
    namespace: dict = {"__name__": "__docs__"}
    cwd = os.getcwd()
    os.chdir(directory)
    try:
        for number, (language, code) in enumerate(code_blocks(page), 1):
            where = f"{page.relative_to(ROOT)} block {number} ({language})"
            if language == "python":
                try:
                    exec(compile(code, where, "exec"), namespace)
                except Exception as error:  # noqa: BLE001 - name the block that failed
                    raise AssertionError(f"{where} raised {error!r}\n{code}") from error
            elif language == "bash":
                result = subprocess.run(["bash", "-c", shell_script(code)], env=env,
                                        capture_output=True, text=True, timeout=900)
                assert result.returncode == 0, (
                    f"{where} exited {result.returncode}\n{shell_script(code)}\n"
                    f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
    finally:
        os.chdir(cwd)


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_code_blocks_are_classified(page):
    """Every block is code that runs here or declared not to be code (a new language must be
    added to one of the two sets)."""
    for language, _ in code_blocks(page):
        assert language in RUN | NOT_CODE, f"{page_id(page)}: block of language {language!r}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_yaml_configurations_validate(page):
    import yaml

    from so3krates.config import Config

    for language, code in code_blocks(page):
        if language == "yaml":
            raw = yaml.safe_load(code)
            if isinstance(raw, dict) and set(raw) <= {"model", "data", "training"}:
                Config.model_validate(raw)


TUTORIALS = ROOT / "docs" / "tutorials"
GETTING_STARTED = ROOT / "docs" / "getting-started.md"
# The README's blocks are the getting-started page's (checked below), run there.
RUNNABLE = [p for p in PAGES if any(lang in RUN for lang, _ in code_blocks(p))
            and p.parent != TUTORIALS and p.name != "README.md"]


def test_readme_blocks_run_in_getting_started():
    """Each runnable block of the README is, verbatim, a block of docs/getting-started.md
    (which runs, with its fixtures, in test_page_runs)."""
    runnable = set(code_blocks(GETTING_STARTED))
    for language, code in code_blocks(ROOT / "README.md"):
        if language in RUN:
            assert (language, code) in runnable, f"README block not in getting-started.md:\n{code}"


def tutorial_order() -> list[Path]:
    """The tutorials in the order of their index page (later ones use earlier ones' files)."""
    index = (TUTORIALS / "index.md").read_text()
    return [TUTORIALS / name for name in re.findall(r"^\d+\. \[[^]]+\]\(([\w-]+\.md)\)", index, re.M)]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=page_id)
def test_page_runs(page, tmp_path, request):
    prepare_directory(tmp_path, [page], request)
    run_page(page, tmp_path)


def tutorial_groups() -> list[list[Path]]:
    """The tutorials in index order, split where one trains its own model: a group runs in one
    directory, in order, and groups are independent (pytest-xdist runs them side by side)."""
    groups: list[list[Path]] = []
    for page in tutorial_order():
        if not groups or trained_outputs(page.read_text()):
            groups.append([])
        groups[-1].append(page)
    return groups


def test_every_tutorial_runs():
    pages = [p for group in tutorial_groups() for p in group]
    assert sorted(pages) == sorted(p for p in TUTORIALS.glob("*.md") if p.name != "index.md")


@pytest.mark.slow
@pytest.mark.parametrize("pages", tutorial_groups(), ids=lambda g: "+".join(p.stem for p in g))
def test_tutorials_run_in_order(pages, tmp_path, request):
    prepare_directory(tmp_path, pages, request)
    for page in pages:
        run_page(page, tmp_path)


def test_training_settings_table_matches_the_defaults():
    """docs/training.md's table of training settings states the defaults of config.py."""
    from so3krates.config import TrainingConfig

    text = (ROOT / "docs" / "training.md").read_text()
    rows = re.findall(r"^\| `(\w+)`(?:, `(\w+)`)* \| ([^|]+) \|", text, re.M)
    fields = TrainingConfig.model_fields
    checked = 0
    for key, _, default in rows:
        if key not in fields:
            continue
        value = fields[key].default
        shown = default.split(",")[0].strip().strip("`")
        if shown in ("–", "-"):
            assert value is None, f"training.{key}: docs say none, config says {value!r}"
        elif isinstance(value, bool) or value is None or isinstance(value, str):
            assert shown == str(value), f"training.{key}: docs {shown!r}, config {value!r}"
        else:
            assert float(shown) == pytest.approx(float(value)), f"training.{key}: docs {shown}, config {value}"
        checked += 1
    assert checked >= 15


def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict`` (what ``make docs`` runs): no broken link, no API page that
    fails to render, no warning."""
    pytest.importorskip("mkdocs", reason="docs dependencies not installed (requirements-docs.lock)")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                             str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert (tmp_path / "site" / "reference" / "potential" / "index.html").exists()
