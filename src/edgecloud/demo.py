"""``edgecloud demo``: a short tour of local inference on the demo zoo."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from ._optional import require
from .backends.local import LocalBackend
from .errors import ModelNotFoundError
from .repository import ModelRepository
from .tensors import InferRequest

__all__ = ["run_demo"]

SENTENCES = [
    "The device answers most requests on its own.",
    "Most requests are served locally on the phone.",
    "Hard cases are escalated to the cloud server.",
    "The cat sat on the warm windowsill.",
]


#: What the demo imports beyond the core, checked before the tour starts so a
#: missing extra is one line up front rather than a failure at the hybrid step:
#: (module, extra, what needs it).
DEMO_NEEDS = (
    ("sklearn", "train", "the demo's digits data"),
    ("uvicorn", "server", "the demo's hybrid step (it starts edgecloud serve)"),
    ("prometheus_client", "server", "the demo's hybrid step (it starts edgecloud serve)"),
    ("httpx", "remote", "the demo's hybrid step (RemoteBackend)"),
)


def run_demo(repo: ModelRepository, console: Console) -> None:
    """Digits on both models, MiniLM similarity when built, then the hybrid cascade.

    Raises:
        MissingDependencyError: an extra in DEMO_NEEDS is not installed.
        ModelNotFoundError: digits-small or digits-large is not in ``repo``.
    """
    for module, extra, feature in DEMO_NEEDS:
        require(module, extra=extra, feature=feature)
    missing = [m for m in ("digits-small", "digits-large") if m not in repo.model_names()]
    if missing:
        raise ModelNotFoundError(
            f"the demo needs {missing} in {repo.root}; build them with: edgecloud zoo build"
        )
    with LocalBackend(repo, intra_op_threads=1) as local:
        _digits(local, console)
        if "minilm" in repo.model_names():
            _sentences(local, repo, console)
    from .demo_hybrid import run_hybrid_demo

    run_hybrid_demo(repo, console)


def _digits(local: LocalBackend, console: Console) -> None:
    from .zoo import datasets

    test = datasets.digits("test")
    console.rule("[bold]Digits: a small edge model and a larger one, same held-out images")
    picks = test.x[:4], test.y[:4]
    small = local.infer(InferRequest("digits-small", {"pixels": picks[0]}))
    large = local.infer(InferRequest("digits-large", {"pixels": picks[0]}))
    art = [_ascii(image) for image in picks[0]]
    for row in range(8):
        console.print("   ".join(a[row] for a in art), highlight=False)
    table = Table("image", "true", "digits-small (confidence)", "digits-large (confidence)")
    for i, label in enumerate(picks[1]):
        table.add_row(str(i + 1), str(label), _top(small.outputs, i), _top(large.outputs, i))
    console.print(table)
    _accuracy_table(local, test, console)


def _accuracy_table(local: LocalBackend, test: Any, console: Console) -> None:
    table = Table("model", "test accuracy", "confident (p>=0.9)", "µs per image, batch 1")
    for model in ("digits-small", "digits-large"):
        probs = local.infer(InferRequest(model, {"pixels": test.x})).outputs["probabilities"]
        accuracy = float(np.mean(probs.argmax(axis=1) == test.y))
        confident = float(np.mean(probs.max(axis=1) >= 0.9))
        start = time.perf_counter()
        for image in test.x[:200]:
            local.infer(InferRequest(model, {"pixels": image[None]}))
        per_image = (time.perf_counter() - start) / 200 * 1e6
        table.add_row(model, f"{accuracy:.1%}", f"{confident:.1%}", f"{per_image:.0f}")
    console.print(table)
    console.print(
        "The small model is confident on most images; a cascade answers those on the "
        "device and escalates the rest to the large model."
    )


def _sentences(local: LocalBackend, repo: ModelRepository, console: Console) -> None:
    from .zoo.minilm import tokenize, tokenizer_of

    console.rule("[bold]MiniLM sentence embeddings, on the device")
    entry = repo.get("minilm")
    response = local.infer(InferRequest("minilm", tokenize(SENTENCES, tokenizer_of(entry))))
    emb = response.outputs["embedding"]
    similarity = emb @ emb.T
    table = Table("", *[f"s{i + 1}" for i in range(len(SENTENCES))], title="cosine similarity")
    for i, sentence in enumerate(SENTENCES):
        table.add_row(f"s{i + 1} {sentence}", *[f"{v:.2f}" for v in similarity[i]])
    console.print(table)
    console.print(response.trace.describe(), highlight=False)


def _top(outputs: dict[str, np.ndarray[Any, Any]], i: int) -> str:
    row = outputs["probabilities"][i]
    return f"{int(row.argmax())} ({row.max():.2f})"


def _ascii(image: np.ndarray[Any, Any]) -> list[str]:
    shades = " .:-=+*#%@"
    pixels = image.reshape(8, 8)
    return ["".join(shades[min(9, int(v * 9.99))] * 2 for v in row) for row in pixels]
