"""No product module imports the demo zoo: sample data travels with the model version.

Only the zoo itself, the demo (``demo.py``, ``demo_hybrid.py``) and the zoo and
demo commands of the CLI may import ``edgecloud.zoo``. Two checks: every module
under ``src/edgecloud`` parsed with ``ast`` (absolute and relative imports, at
module level or inside functions, and ``importlib.import_module`` /
``__import__`` of a constant name), and product commands run end to end in a
process where importing ``edgecloud.zoo`` raises.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgecloud import InferRequest, RemoteBackend
from edgecloud.server.launch import serve_process

from .conftest import ROOT
from .models import affine_onnx

SRC = ROOT / "src" / "edgecloud"
ZOO = "edgecloud.zoo"

ALLOWED_MODULES = {"edgecloud.demo", "edgecloud.demo_hybrid"}
"""Modules that may import the zoo anywhere (besides the zoo's own)."""
ALLOWED_FUNCTIONS = {"edgecloud.cli": {"zoo_build", "zoo_list", "demo"}}
"""Modules that may import the zoo only inside these top-level functions: the
``zoo build``, ``zoo list`` and ``demo`` commands."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _is_zoo(name: str) -> bool:
    return name == ZOO or name.startswith(ZOO + ".")


def _resolve(package: str, level: int, module: str | None) -> str:
    """The absolute module of ``from <level dots><module> import ...`` in ``package``."""
    if level == 0:
        return module or ""
    base = package.split(".")
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def zoo_imports(source: str, module: str, package: str) -> Iterator[tuple[int, str, str | None]]:
    """(line, imported name, enclosing top-level function or None) of every zoo import."""
    tree = ast.parse(source)
    for top in tree.body:
        function = top.name if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef) else None
        for node in ast.walk(top):
            names = [name for name in _imported(node, package) if _is_zoo(name)]
            if names:  # one finding per import statement or call
                yield node.lineno, names[0], function


def _imported(node: ast.AST, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = _resolve(package, node.level, node.module)
        return [base, *(f"{base}.{alias.name}" for alias in node.names)]
    if isinstance(node, ast.Call) and node.args:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        first = node.args[0]
        if called in ("import_module", "__import__") and isinstance(first, ast.Constant):
            name = str(first.value)
            if name.startswith("."):  # import_module(".zoo", package=__package__)
                dots = len(name) - len(name.lstrip("."))
                return [_resolve(package, dots, name[dots:] or None)]
            return [name]
    return []


def _allowed(module: str, function: str | None) -> bool:
    if _is_zoo(module) or module in ALLOWED_MODULES:
        return True
    return function is not None and function in ALLOWED_FUNCTIONS.get(module, set())


def offenders() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        for line, name, function in zoo_imports(path.read_text(), module, _package(module, path)):
            if not _allowed(module, function):
                where = f" in {function}()" if function else ""
                found.append(f"{path.relative_to(ROOT)}:{line}{where} imports {name}")
    return found


def test_no_product_module_imports_the_zoo() -> None:
    found = offenders()
    assert not found, "product code must not import edgecloud.zoo:\n" + "\n".join(found)


def test_the_allowed_cli_functions_exist() -> None:
    """The allow-list names real commands (a renamed command must not widen it silently)."""
    tree = ast.parse((SRC / "cli.py").read_text())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert ALLOWED_FUNCTIONS["edgecloud.cli"] <= defined


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("import edgecloud.zoo", "edgecloud.x"),
        ("import edgecloud.zoo.minilm as m", "edgecloud.x"),
        ("from edgecloud.zoo import datasets", "edgecloud.x"),
        ("from edgecloud import zoo", "edgecloud.x"),
        ("from .zoo import datasets", "edgecloud.x"),
        ("from . import zoo", "edgecloud.x"),
        ("from ..zoo.minilm import tokenize", "edgecloud.split.x"),
        ("from .. import zoo", "edgecloud.split.x"),
        ("def f():\n    from ..zoo import datasets", "edgecloud.split.x"),
        ("class C:\n    def f(self):\n        import edgecloud.zoo", "edgecloud.x"),
        ("import importlib\nimportlib.import_module('edgecloud.zoo')", "edgecloud.x"),
        ("import importlib\nimportlib.import_module('.zoo', __package__)", "edgecloud.x"),
        ("__import__('edgecloud.zoo.datasets')", "edgecloud.x"),
    ],
)
def test_every_form_of_import_is_seen(source: str, module: str) -> None:
    package = module.rpartition(".")[0]
    assert [name for _, name, _ in zoo_imports(source, module, package)]


@pytest.mark.parametrize(
    "source",
    ["import edgecloud.zoology", "from .zoom import x", "from ..edgecloud import zoo_tools",
     "from .samples import data_for", "x = 'edgecloud.zoo'"],
)  # fmt: skip
def test_other_names_are_not_the_zoo(source: str) -> None:
    assert not list(zoo_imports(source, "edgecloud.x", "edgecloud"))


def test_only_the_named_commands_of_the_cli_may_import_it() -> None:
    source = (
        "def zoo_build():\n    from .zoo import build_zoo\ndef serve():\n    from .zoo import x"
    )
    found = [(n, f) for _, n, f in zoo_imports(source, "edgecloud.cli", "edgecloud")]
    assert [f for n, f in found if not _allowed("edgecloud.cli", f)] == ["serve"]
    assert not _allowed("edgecloud.cli", None)  # never at module level


BLOCKED_CLI = textwrap.dedent(
    """
    import importlib.abc, runpy, sys

    class BlockZoo(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "edgecloud.zoo" or name.startswith("edgecloud.zoo."):
                raise ImportError(f"{name} is blocked: product code must not import the zoo")
            return None

    sys.meta_path.insert(0, BlockZoo())
    sys.argv = ["edgecloud", *sys.argv[1:]]
    runpy.run_module("edgecloud.cli", run_name="__main__", alter_sys=True)
    """
)


def test_product_commands_run_with_the_zoo_blocked(tmp_path: Path) -> None:
    """import, split, serve and advise --measure (device and server) on a model made
    here, in processes where importing edgecloud.zoo raises ImportError."""
    script = tmp_path / "blocked_cli.py"
    script.write_text(BLOCKED_CLI)
    env = {**os.environ, "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}

    def run(*args: str | Path) -> str:
        result = subprocess.run(
            [sys.executable, str(script), *map(str, args)],
            capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    repo = tmp_path / "repo"
    np.savez(tmp_path / "rows.npz", x=np.random.default_rng(0).standard_normal((6, 4), "f4"))
    run("import", affine_onnx(tmp_path / "mine.onnx"), "--name", "mine", "--repo", repo,
        "--samples", tmp_path / "rows.npz", "--max-batch-size", "8")  # fmt: skip
    assert "split" in run("split", "mine", "--repo", repo, "--codec", "fp32", "--cuts", "cut0")
    server = serve_process(repo, wrap=lambda argv: [argv[0], str(script), *argv[3:]])
    try:
        with RemoteBackend(server.url, timeout=10) as remote:
            answer = remote.infer(InferRequest("mine", {"x": np.ones((2, 4), np.float32)}))
        assert answer.outputs["z"].shape == (2, 3)
        (tmp_path / "workload.yaml").write_text(yaml.safe_dump(_workload(server.url)))
        out = run("advise", tmp_path / "workload.yaml", "--measure", "--repo", repo,
                  "--remote", server.url, "--out", tmp_path / "advice", "--no-plot")  # fmt: skip
    finally:
        server.stop()
    assert "device compute: mine" in out and "server compute: mine" in out
    assert "samples.npz (6 of 6 rows)" in " ".join(out.split())
    assert json.loads((repo / "mine" / "split-profile.json").read_text())["model"] == "mine"


def _workload(url: str) -> dict[str, object]:
    return {
        "name": "mine",
        "remote_url": url,
        "application": {"latency_p50_ms": 50, "latency_p99_ms": 500, "requests_per_s": 1,
                        "payload_kb": 0.1, "availability": 0.99},
        "model": {"name": "mine", "memory_mb": 1, "gflops": 0.00001, "accuracy": 0.9},
        "device": {"memory_mb": 100, "gflops_per_s": 1},
        "network": {"rtt_ms": 40, "uplink_mbps": 5, "availability": 0.98},
    }  # fmt: skip
