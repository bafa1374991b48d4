"""torch module factories for ``compress --module`` in the tests (deterministic weights).

Each factory builds its module under a fixed seed, so calling it again gives
the module a test exported to ONNX: what ``prune`` needs. The students are
fresh modules for ``distill``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SmallCNN(nn.Module):  # type: ignore[misc]
    """image FP32 [batch, 1, 8, 8] -> logits FP32 [batch, 3]: two convs, pool, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, 3)

    def forward(self, image: Any) -> Any:
        return self.head(torch.flatten(self.pool(self.features(image)), 1))


def small_cnn() -> nn.Module:
    torch.manual_seed(1)
    return SmallCNN().eval()


def mlp() -> nn.Module:
    """x FP32 [batch, 20] -> probabilities FP32 [batch, 4] (Softmax last, as classifiers export)."""
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4),
        nn.Softmax(dim=1),
    ).eval()  # fmt: skip


def mlp_student() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 4), nn.Softmax(dim=1))


def wrong_student() -> nn.Module:
    """Five outputs where the teacher has four."""
    return nn.Sequential(nn.Linear(20, 5), nn.Softmax(dim=1))


def resnet18_like() -> nn.Module:
    """The zoo's resnet18-like, weights as its recipe draws them (seed 0)."""
    from edgecloud.zoo.resnet import SEED, resnet18

    torch.manual_seed(SEED)
    return resnet18()


def not_a_module() -> str:
    return "a string"


class _CentredOverBatch(nn.Module):  # type: ignore[misc]
    """Subtracts the batch mean of the scores: each row's answer depends on the others."""

    def forward(self, scores: Any) -> Any:
        return scores - scores.mean(0, keepdim=True)


def batch_mixing_student() -> nn.Module:
    """The right shapes, but rows interact (mean over the batch axis)."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(20, 4), _CentredOverBatch(), nn.Softmax(dim=1))
