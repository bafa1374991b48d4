"""SIGKILL the draining edge process again and again: no item lost, none applied twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgecloud import InferRequest, ModelRepository
from edgecloud.routing import Outbox

from ..conftest import ROOT
from ..server.conftest import Server
from .conftest import metric

pytestmark = pytest.mark.slow
ITEMS = 150
KILLS = 12


def worker(db: Path, url: str, pause: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("outbox_worker.py")), str(db), url,
         str(pause)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )  # fmt: skip


def test_repeated_sigkill_loses_nothing_and_duplicates_nothing(
    zoo_repo: ModelRepository, zoo_server: Server, tmp_path: Path
) -> None:
    db = tmp_path / "outbox.db"
    box = Outbox(db)
    rng = np.random.default_rng(7)
    for _ in range(ITEMS):
        box.put(InferRequest("digits-large", {"pixels": rng.random((1, 64), dtype=np.float32)}))
    box.close()
    computed_before = metric(zoo_server, "edgecloud_computations_started_total", "digits-large")
    chooser = random.Random(3)
    kills = 0
    for _ in range(KILLS):
        process = worker(db, zoo_server.url, pause=0.03)
        time.sleep(chooser.uniform(0.3, 0.6))  # interpreter start-up, then mid-drain
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.communicate(timeout=30)
    final = worker(db, zoo_server.url, pause=0.0)
    _, err = final.communicate(timeout=120)
    assert final.returncode == 0, err
    assert kills >= 10, "the workers finished before they could be killed"

    box = Outbox(db)
    stats = box.stats()
    assert stats["pending"] == 0 and stats["delivered"] == ITEMS
    assert stats["dropped"] == stats["expired"] == stats["dead_lettered"] == 0
    # each computed once: counted where the server hands a request to the runtime. Not
    # requests minus replays: a request whose sender was killed before its body was
    # whole is counted (499) and never computed, and its retry computes it once
    computed = (
        metric(zoo_server, "edgecloud_computations_started_total", "digits-large") - computed_before
    )
    assert computed == ITEMS, f"{computed} computations of {ITEMS} items"
