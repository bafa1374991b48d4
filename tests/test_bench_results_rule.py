"""One rule for every bench script: only a run with the defaults (or ``--write``)
writes the committed ``bench/results/``; a trial run writes ``bench/results/local/``."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

BENCH = ROOT / "bench"


def _common() -> object:
    spec = importlib.util.spec_from_file_location("bench_common", BENCH / "_common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("argv", "committed"),
    [
        ([], True),
        (["--repo", "elsewhere"], True),  # where the zoo is, not what is measured
        (["--runs", "3"], False),
        (["--quick"], False),
        (["--runs", "3", "--write"], True),
    ],
)
def test_a_trial_run_never_overwrites_the_committed_results(
    argv: list[str], committed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    common: object = _common()
    parser = argparse.ArgumentParser(description="``x`` measured")
    parser.add_argument("--repo", default="model-repo", type=Path)
    parser.add_argument("--runs", default=10, type=int)
    parser.add_argument("--quick", action="store_true")
    monkeypatch.setattr(sys, "argv", ["bench.py", *argv])
    common.parse_bench_args(parser)  # type: ignore[attr-defined]
    expected = common.RESULTS if committed else common.LOCAL_RESULTS  # type: ignore[attr-defined]
    assert common._out == expected  # type: ignore[attr-defined]
    assert "``" not in parser.format_help() and "(default: 10)" in parser.format_help()


def test_every_bench_script_that_writes_results_follows_the_rule() -> None:
    for script in sorted(BENCH.glob("*.py")):
        text = script.read_text()
        if script.name == "_common.py" or "write_result" not in text:
            continue
        assert "parse_bench_args(parser)" in text, script.name
        assert "RESULTS" not in text, f"{script.name} writes bench/results/ past the rule"
    assert "bench/results/local/" in (ROOT / ".gitignore").read_text().splitlines()


def test_edge_footprint_help_reads_as_plain_text() -> None:
    shown = subprocess.run(
        [sys.executable, str(BENCH / "edge_footprint.py"), "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "``" not in shown.stdout and "(default: 10)" in shown.stdout
