"""The edge path runs on numpy + onnxruntime alone: heavy extras are blocked outright."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from edgecloud import ModelRepository

BLOCKED = ["torch", "sklearn", "transformers", "tokenizers", "onnx", "matplotlib", "scipy"]

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {blocked!r}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    import numpy as np
    import edgecloud
    from edgecloud import InferRequest, LocalBackend

    with LocalBackend({root!r}) as local:
        out = local.infer(InferRequest("affine", {{"x": np.ones((2, 4), np.float32)}}))
    assert out.outputs["z"].shape == (2, 3)
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not heavy, heavy
    try:
        from edgecloud.zoo import build_zoo
        from edgecloud import ModelRepository
        build_zoo(ModelRepository({root!r}), ["digits-small"], force=True)
    except edgecloud.MissingDependencyError as exc:
        print("MISSING:", exc.message)
    print("EDGE-OK")
    """
)


def test_local_inference_without_any_extra(repo: ModelRepository) -> None:
    script = SCRIPT.format(blocked=BLOCKED, root=str(repo.root))
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "EDGE-OK" in result.stdout
    assert "pip install 'edgecloud[train]'" in result.stdout


#: What the lean edge path must not load: validation and CLI frameworks, remote
#: clients, asyncio (it loads ssl: +7 MB RSS). bench/edge_footprint.py measures why.
NOT_ON_EDGE = [
    "pydantic",
    "pydantic_core",
    "yaml",
    "ruamel",
    "rich",
    "typer",
    "httpx",
    "grpc",
    "tuf",
    "zstandard",
    "cryptography",
    "asyncio",
    "ssl",
    "email",
    "sqlite3",
]

LEAN_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import edgecloud
    after_import = sorted({{m.split(".")[0] for m in sys.modules}} & set({forbidden!r}))
    from edgecloud import InferRequest, LocalBackend

    local = LocalBackend({root!r})
    for model, feeds in {feeds}.items():
        out = local.infer(InferRequest(model, {{k: np.ones(s, d) for k, (s, d) in feeds.items()}}))
        assert out.outputs, model
    loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({forbidden!r}))
    print("IMPORT:", after_import)
    print("LOADED:", loaded)
    """
)


def _loaded_by_edge_path(root: str, feeds: dict[str, dict[str, tuple[list[int], str]]]) -> str:
    script = LEAN_SCRIPT.format(forbidden=NOT_ON_EDGE, root=root, feeds=feeds)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_edge_request_loads_no_framework(zoo_repo: ModelRepository) -> None:
    """import edgecloud + LocalBackend + first requests on the zoo's digits-small and
    minilm (value-bounded int64 inputs) load none of NOT_ON_EDGE."""
    feeds = {
        "digits-small": {"pixels": ([1, 64], "float32")},
        "minilm": {"input_ids": ([1, 8], "int64"), "attention_mask": ([1, 8], "int64")},
    }
    out = _loaded_by_edge_path(str(zoo_repo.root), feeds)
    assert "IMPORT: []" in out, out
    assert "LOADED: []" in out, out


def test_edge_request_on_a_config_the_lean_reader_leaves_to_pydantic(
    repo: ModelRepository,
) -> None:
    """A config outside the plain subset (an inline comment) still serves: through pydantic."""
    path = repo.root / "affine" / "config.yaml"
    text = path.read_text()
    assert "name: affine\n" in text
    path.write_text(text.replace("name: affine\n", "name: affine  # PyYAML reads this one\n", 1))
    out = _loaded_by_edge_path(str(repo.root), {"affine": {"x": ([2, 4], "float32")}})
    assert "IMPORT: []" in out, out
    assert "pydantic" in out.split("LOADED:")[1], out


def test_lazy_package_names() -> None:
    """Every public name resolves (tests/test_public_api.py) and lists; others do not."""
    import pytest

    import edgecloud

    assert set(edgecloud.__all__) <= set(dir(edgecloud))
    assert edgecloud.ModelLoadError is __import__("edgecloud.errors").errors.ModelLoadError
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = edgecloud.no_such_name  # type: ignore[attr-defined]
