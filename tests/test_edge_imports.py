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
