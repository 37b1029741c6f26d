"""MkDocs hooks: pages generated from the code and the benchmark results at build time.

A page asks for generated content with a marker line; the hook replaces it:

- ``<!-- generated: cli-reference -->``: ``so3krates COMMAND --help`` of every command;
- ``<!-- generated: benchmark-tables -->``: the tables of ``benchmarks/results_table.py``
  (the files in its ``RELEVANT`` list and ``SUMMARIES``).

Generated at build time so that these pages cannot disagree with the code or the results.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def cli_reference() -> str:
    """The ``--help`` text of the ``so3krates`` command and each of its subcommands."""
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal width: fix it
    from so3krates import cli

    def help_text(argv: list[str]) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            cli.main([*argv, "--help"])
        return out.getvalue().rstrip()

    top = help_text([])
    commands = top.split("{", 1)[1].split("}", 1)[0].split(",")
    parts = [f"```text\n{top}\n```"]
    for command in commands:
        parts.append(f"## `so3krates {command}`\n\n```text\n{help_text([command])}\n```")
    return "\n\n".join(parts)


def _benchmarks_module(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def benchmark_tables() -> str:
    """Markdown tables of the current benchmark results, straight from their JSON files."""
    results_table = _benchmarks_module("results_table")
    parts = [results_table.render([RESULTS / n for n in results_table.RELEVANT], link_prefix=None)]
    summaries = {k: RESULTS / name for k, name in results_table.SUMMARIES.items()}
    if "materials" in summaries:
        report = _benchmarks_module("materials_report")
        text = report.table(json.loads(summaries["materials"].read_text())).strip()
        parts.append(f"**Materials (`materials.py`, `{summaries['materials'].name}`)**\n\n"
                     f"```text\n{text}\n```")
    if "thermal" in summaries:
        parts.append(results_table.thermal_section(summaries["thermal"]))
    for key, path in summaries.items():
        if key.startswith("defaults"):
            parts.append(results_table.defaults_section(path))
    for key, path in summaries.items():
        if key.startswith("long_range"):
            parts.append(results_table.long_range_section(path))
    return "\n\n".join(p for p in parts if p)


GENERATORS = {
    "<!-- generated: cli-reference -->": cli_reference,
    "<!-- generated: benchmark-tables -->": benchmark_tables,
}


def on_page_markdown(markdown: str, **kwargs) -> str:
    for marker, generate in GENERATORS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown
