"""Issue 14, kind 8: a missing extra is one line naming it, never a traceback.

Two halves:

* structural — every ``import`` of a package outside the core (numpy,
  onnxruntime, pydantic, pyyaml, ruamel.yaml, typer, rich) anywhere in ``src/edgecloud``
  is guarded (``try/except ImportError`` with a fallback, or
  ``TYPE_CHECKING``); everything else goes through ``require(module,
  extra=...)``, and the extra it names really provides the module
  (pyproject's optional dependencies, through the installed distributions);
* behavioural — each CLI command run in a subprocess whose import system
  refuses one extra's packages (the technique of tests/test_edge_imports.py)
  exits 1 with one line naming an extra that provides the refused package,
  and the core-only commands (``models list``, ``infer``) still work with
  every extra refused.
"""

from __future__ import annotations

import ast
import importlib.metadata
import itertools
import re
import subprocess
import sys
import textwrap
import tomllib
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import yaml

from ..models import make_repo

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "edgecloud"
CORE = {"numpy", "onnxruntime", "pydantic", "yaml", "ruamel", "typer", "rich", "typing_extensions"}
#: Submodules of core packages that import optional ones (onnxruntime's
#: quantization tools import onnx), and our generated stubs (grpc, protobuf).
OPTIONAL_SUBMODULES = ("onnxruntime.quantization", "onnxruntime.transformers", "edgecloud.proto")
EXTRAS = ("train", "compress", "remote", "server", "bench", "triton", "fleet")


# --- structural ------------------------------------------------------------


def _absolute(module: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = list(module.relative_to(SRC.parent).with_suffix("").parts)[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _is_optional(name: str) -> bool:
    top = name.split(".")[0]
    if any(name == s or name.startswith(s + ".") for s in OPTIONAL_SUBMODULES):
        return True
    return top not in CORE and top != "edgecloud" and top not in sys.stdlib_module_names


def _guarded(chain: list[ast.AST]) -> bool:
    """Under ``if TYPE_CHECKING:`` or in a ``try`` body that catches ImportError."""
    for parent, child in itertools.pairwise(chain):
        typing_only = isinstance(parent, ast.If) and "TYPE_CHECKING" in ast.unparse(parent.test)
        if typing_only and child in parent.body:
            return True
        if isinstance(parent, ast.Try) and child in parent.body:
            caught = " ".join(ast.unparse(h.type) for h in parent.handlers if h.type)
            if re.search(r"\b(ImportError|ModuleNotFoundError|Exception)\b", caught):
                return True
    return False


def _walk(node: ast.AST, chain: list[ast.AST]) -> list[tuple[ast.AST, list[ast.AST]]]:
    found = [(node, chain)]
    for child in ast.iter_child_nodes(node):
        found += _walk(child, [*chain, node])
    return found


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "proto" not in p.relative_to(SRC).parts)


def _unguarded_imports() -> list[str]:
    bad = []
    for path in _modules():
        for node, chain in _walk(ast.parse(path.read_text()), []):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [_absolute(path, node)]
                if names[0] == "edgecloud" or names[0].endswith(".proto"):
                    names = [f"{names[0]}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if _is_optional(name) and not _guarded([*chain, node]):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: import {name}")
    return bad


def test_every_optional_import_is_behind_require_or_a_guard() -> None:
    assert _unguarded_imports() == []


@cache
def _extra_modules() -> dict[str, set[str]]:
    """extra → the top-level modules its distributions install (from this environment)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    by_dist: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            by_dist.setdefault(_canonical(dist), set()).add(module)
    modules = {}
    for extra in EXTRAS:
        requirements = project["optional-dependencies"][extra]
        names = [re.split(r"[<>=!\[; ]", r, maxsplit=1)[0] for r in requirements]
        modules[extra] = set().union(*(by_dist.get(_canonical(n), set()) for n in names))
    # Our generated stubs need grpcio and protobuf: whichever extra carries both.
    for found in modules.values():
        if {"grpc", "google"} <= found:
            found.add("edgecloud")
    return modules


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _require_calls() -> list[tuple[str, str, str]]:
    """Every require() call with literal arguments, plus the demo's table of them."""
    from edgecloud.demo import DEMO_NEEDS

    calls = [("edgecloud.demo.DEMO_NEEDS", module, extra) for module, extra, _ in DEMO_NEEDS]
    for path in _modules():
        for node, _ in _walk(ast.parse(path.read_text()), []):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "require":
                module = node.args[0]
                extra = next(k.value for k in node.keywords if k.arg == "extra")
                if isinstance(module, ast.Constant) and isinstance(extra, ast.Constant):
                    where = f"{path.relative_to(ROOT)}:{node.lineno}"
                    calls.append((where, module.value, extra.value))
    return calls


def test_every_require_names_an_extra_that_installs_the_module() -> None:
    calls = _require_calls()
    assert len(calls) > 40  # the scan sees them all
    wrong = []
    for where, module, extra in calls:
        top = module.split(".")[0]
        if top in CORE and not _is_optional(module):
            continue
        if top == "onnxruntime":  # onnxruntime's quantization tools need onnx
            top = "onnx"
        if extra not in _extra_modules() or top not in _extra_modules()[extra]:
            wrong.append(f"{where}: require({module!r}, extra={extra!r})")
    assert wrong == []


def test_the_demo_installs_every_extra_it_requires() -> None:
    from edgecloud.demo import DEMO_NEEDS

    makefile = (ROOT / "Makefile").read_text()
    installed = re.search(r'\.demo-deps:.*\n(?:#.*\n)*\t\$\(PIP\) -e "\.\[([a-z,]+)\]"', makefile)
    assert installed, "the Makefile's demo-deps recipe installs .[extras]"
    assert {extra for _, extra, _ in DEMO_NEEDS} <= set(installed.group(1).split(","))


# --- behavioural: the CLI with an extra refused -----------------------------

RUNNER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    sys.argv = ["edgecloud", *{argv!r}]
    from edgecloud.cli import main
    main()
    """
)


def _blocked(extra: str) -> list[str]:
    if extra == "all":
        return sorted(set().union(*_extra_modules().values()) - {"edgecloud"})
    return sorted(_extra_modules()[extra] - {"edgecloud"})


def _cli(argv: list[str], blocked: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    script = RUNNER.format(blocked=blocked, argv=argv)
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**_env(), "COLUMNS": "200"},
    )


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "EDGECLOUD_DEBUG"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny repository, an input file and a deployment with a remote tier."""
    root = tmp_path_factory.mktemp("first-run")
    make_repo(root)  # root/repo
    np.save(root / "x.npy", np.ones((2, 4), np.float32))
    readings = np.random.default_rng(0).normal(size=(2, 200, 3)).astype(np.float32)
    np.save(root / "normal.npy", readings[0])
    np.save(root / "readings.npy", readings[1])
    cascade = {"small": "local", "large": "local", "small_model": "affine",
               "large_model": "affine", "threshold": 0.5, "output": "z"}  # fmt: skip
    x = np.random.default_rng(1).normal(size=(40, 4)).astype(np.float32)
    np.savez(root / "val.npz", x=x, labels=np.arange(40) % 3)
    (root / "cascade.yaml").write_text(
        yaml.safe_dump({"repository": str(root / "repo"), "root": {"cascade": cascade}})
    )
    (root / "deployment.yaml").write_text(
        yaml.safe_dump(
            {
                "repository": str(root / "repo"),
                "remotes": {"cloud": {"url": "http://127.0.0.1:9", "timeout_s": 1}},
                "root": {"prefer_remote": {"remote": "cloud", "local": "local"}},
            }
        )
    )
    return root


FILTER = ["filter", "--trigger", "anomaly", "--input", "readings.npy", "--fit", "normal.npy"]

#: (command line, refused extra): each must fail with one line naming an extra
#: that provides the refused package the command reached first.
NEEDS = [
    (["serve", "--repo", "repo", "--http-port", "18999", "--grpc-port", "18998"], "server"),
    (["edge", "-d", "deployment.yaml", "--port", "0"], "server"),
    (["edge", "-d", "deployment.yaml", "--port", "0"], "remote"),
    (["demo", "--repo", "repo"], "server"),
    (["demo", "--repo", "repo"], "remote"),
    (["demo", "--repo", "repo"], "train"),
    (["demo", "--repo", "repo"], "all"),
    (["zoo", "build", "--repo", "zoo", "--only", "digits-small"], "train"),
    (["compress", "affine", "--repo", "repo", "-m", "int8-dynamic"], "compress"),
    (["compress", "affine", "--repo", "repo", "-m", "fp16"], "compress"),
    (["split", "affine", "--repo", "repo", "--data", "val.npz"], "compress"),
    (["advise", "-s", "camera-fleet", "--plot", "--out", "advice"], "bench"),
    (
        [
            "split",
            "affine",
            "--repo",
            "repo",
            "--data",
            "val.npz",
            "--remote",
            "http://127.0.0.1:9",
        ],
        "remote",
    ),
    ([*FILTER, "--plot", "events.png"], "bench"),
]

LINE = re.compile(r"needs the Python package '([\w.]+)'.*pip install 'edgecloud\[(\w+)\]'")


@pytest.mark.parametrize(
    ("argv", "extra"), NEEDS, ids=[f"{'-'.join(a[:2])}-without-{e}" for a, e in NEEDS]
)
def test_a_command_without_its_extra_says_which_in_one_line(
    argv: list[str], extra: str, workdir: Path
) -> None:
    result = _cli(argv, _blocked(extra), workdir)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr + result.stdout
    assert len(lines) == 1 and "Traceback" not in result.stdout, result.stderr + result.stdout
    match = LINE.search(lines[0])
    assert match, lines[0]
    missing, named = match.groups()
    assert missing.split(".")[0] in _blocked(extra), lines[0]
    assert missing.split(".")[0] in _extra_modules()[named], (
        f"{lines[0]}: edgecloud[{named}] does not install {missing}"
    )


def test_advise_without_matplotlib_writes_everything_but_the_plots(workdir: Path) -> None:
    """Plots are drawn when the 'bench' extra is installed; without it advise says so in
    one note and still writes the report and the deployment (``--plot`` insists)."""
    result = _cli(
        ["advise", "-s", "camera-fleet", "--out", "advice-auto"], _blocked("all"), workdir
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        "note: no plots (matplotlib is not installed: pip install 'edgecloud[bench]')"
    ]
    written = sorted(p.name for p in (workdir / "advice-auto").iterdir())
    assert "deployment.yaml" in written and "report.md" in written
    assert not [name for name in written if name.endswith(".png")]


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "list", "--repo", "repo"],
        ["infer", "affine", "--repo", "repo", "-i", "x.npy"],
        ["zoo", "list"],
        ["version"],
        ["advise", "-s", "camera-fleet", "--no-plot", "--out", "advice-core"],
        FILTER,
        ["calibrate", "-d", "cascade.yaml", "--data", "val.npz", "--max-escalation", "1"],
    ],
    ids=["models-list", "infer", "zoo-list", "version", "advise-no-plot", "filter", "calibrate"],
)
def test_core_commands_run_with_every_extra_refused(argv: list[str], workdir: Path) -> None:
    result = _cli(argv, _blocked("all"), workdir)
    assert result.returncode == 0, result.stderr
    # nothing but the command's own warnings (calibrate on 40 rows says they are few)
    assert all(line.startswith("warning: ") for line in result.stderr.splitlines()), result.stderr
