from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgecloud import ModelRepository

from .models import make_repo

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Servers the tests start keep their idempotency stores in a temp folder,
    not in the user's ~/.local/state/edgecloud."""
    os.environ.setdefault("EDGECLOUD_STATE_DIR", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    """A fresh repository of tiny models built in code."""
    return make_repo(tmp_path)


@pytest.fixture(scope="session")
def zoo_repo() -> ModelRepository:
    """The demo zoo, built once and cached under .cache/test-zoo between runs."""
    from edgecloud.zoo import build_zoo

    repository = ModelRepository(ROOT / ".cache" / "test-zoo")
    build_zoo(repository)
    return repository
