"""resnet18-like: a standard ResNet-18 written in plain torch, with seeded random weights.

The weights are untrained: the model exists for latency and split-computing
work (it has the layer shapes and cost of the real backbone), not for
predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..repository import ModelConfig
from ..tensors import TensorSpec
from .export import export_onnx, export_torchscript
from .recipe import Built, Progress, Recipe, write_samples

__all__ = ["RESNET18_LIKE", "resnet18", "sample_images"]

SEED = 0
IMAGE = 224
CLASSES = 1000
SAMPLE_IMAGES = 4
BLOCK = 16
"""Side of the constant squares of a sample image, in pixels (224 = 14 x 16)."""


def resnet18(num_classes: int = CLASSES) -> Any:
    """ResNet-18 (basic blocks, [2, 2, 2, 2]) with He-initialised random weights."""
    torch = require("torch", extra="train", feature="building resnet18-like")
    nn = torch.nn

    class BasicBlock(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x: Any) -> Any:
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + self.down(x))

    def stage(cin: int, cout: int, stride: int) -> Any:
        return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))

    model = nn.Sequential(
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
        stage(64, 64, 1),
        stage(64, 128, 2),
        stage(128, 256, 2),
        stage(256, 512, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, num_classes),
    )
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model.eval()


def sample_images(count: int = SAMPLE_IMAGES, seed: int = SEED) -> np.ndarray[Any, Any]:
    """``count`` images FP32 [count, 3, 224, 224]: a seeded standard-normal 14 x 14
    grid per channel, each value filling a 16 x 16 square.

    Zero mean and unit variance like an ImageNet-normalised photo, with the
    spatial correlation of one (neighbouring pixels agree), and small on disk.
    """
    rng = np.random.default_rng(seed)
    grid = rng.standard_normal((count, 3, IMAGE // BLOCK, IMAGE // BLOCK)).astype(np.float32)
    return np.ascontiguousarray(grid.repeat(BLOCK, axis=2).repeat(BLOCK, axis=3))


def _build(workdir: Path, progress: Progress) -> Built:
    torch = require("torch", extra="train", feature="building resnet18-like")
    torch.manual_seed(SEED)
    model = resnet18()
    progress(0.3, "exporting")
    path = export_onnx(
        model,
        (torch.zeros(1, 3, IMAGE, IMAGE),),
        workdir / "model.onnx",
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
    )
    config = ModelConfig(
        name="resnet18-like",
        max_batch_size=32,
        inputs=[TensorSpec(name="image", datatype="FP32", shape=(3, IMAGE, IMAGE))],
        outputs=[TensorSpec(name="logits", datatype="FP32", shape=(CLASSES,))],
        description="ResNet-18 architecture with UNTRAINED seeded random weights "
        "(for latency and split computing, not predictions)",
        metrics={"parameters": float(sum(p.numel() for p in model.parameters()))},
        metadata={"weights": f"untrained, torch.manual_seed({SEED}), He init", "input": "NCHW"},
    )
    script = export_torchscript(model, (torch.zeros(1, 3, IMAGE, IMAGE),), workdir / "model.pt")
    samples = write_samples(workdir / "samples.npz", {"image": sample_images()})
    return Built(path, config, extra_files={"model.pt": script}, samples=samples)


RESNET18_LIKE = Recipe(
    name="resnet18-like",
    revision=3,  # 3: samples.npz, seeded images
    summary="ResNet-18 backbone in plain torch, untrained seeded weights",
    build=_build,
)
