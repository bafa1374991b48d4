"""Model control across processes: the wanted set of one serve run is its own (two
servers on one repository never change each other's models), a load or unload
answers once every worker of the run applied it, and what a version directory
claims to be is checked (links out of the repository, a number it does not hold)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as grpcclient

from edgecloud import ModelRepository
from edgecloud.server.host import ModelHost
from edgecloud.server.settings import ServerSettings

from ..backends.test_hot_swap import X, shifted_onnx
from ..models import affine_config
from .conftest import Server, start_server

BODY = {"inputs": [{"name": "x", "shape": list(X.shape), "datatype": "FP32",
                    "data": X.ravel().tolist()}]}  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelRepository:
    """Two models; the default idempotency store (what two servers on one repository
    share by design) under the test's own state directory."""
    monkeypatch.setenv("EDGECLOUD_STATE_DIR", str(tmp_path / "state"))
    repo = ModelRepository(tmp_path / "repo")
    repo.add_version("affine", shifted_onnx(tmp_path / "a.onnx", 1.0), config=affine_config())
    other = affine_config().model_copy(update={"name": "other"})
    repo.add_version("other", shifted_onnx(tmp_path / "b.onnx", 2.0), config=other)
    return repo


def fresh(server: Server, method: str, path: str, **kwargs: object) -> httpx.Response:
    """One request on a connection of its own: the kernel may give it to any worker."""
    with httpx.Client(timeout=30) as client:
        return client.request(method, server.url + path, **kwargs)  # type: ignore[arg-type]


def served_everywhere(
    server: Server, model: str, rounds: int = 20
) -> tuple[Counter[str], set[str]]:
    """(ready and infer status codes, worker pids that answered) over fresh connections."""
    codes: Counter[str] = Counter()
    workers: set[str] = set()
    for _ in range(rounds):
        ready = fresh(server, "GET", f"/v2/models/{model}/ready")
        infer = fresh(server, "POST", f"/v2/models/{model}/infer", json=BODY)
        codes[f"{ready.status_code}/{infer.status_code}"] += 1
        workers |= {r.headers.get("x-edgecloud-worker", "-") for r in (ready, infer)}
    return codes, workers


def test_two_servers_on_one_repository_keep_their_own_models(repo: ModelRepository) -> None:
    tmp = repo.root.parent
    a = start_server(repo, tmp, "--model-control", "explicit", "--load-model", "affine")
    b = start_server(repo, tmp, "--model-control", "explicit", "--load-model", "other",
                     "--workers", "2")  # fmt: skip
    try:
        # a third server with nothing to load: it changes no other server's set
        c = start_server(repo, tmp, "--model-control", "explicit")
        assert fresh(b, "POST", "/v2/repository/models/affine/unload").status_code == 200
        assert fresh(c, "POST", "/v2/repository/models/other/load").status_code == 200
        time.sleep(0.3)  # several control ticks of every worker
        assert fresh(a, "GET", "/v2/models/affine/ready").status_code == 200
        assert fresh(a, "GET", "/v2/models/other/ready").status_code != 200
        assert served_everywhere(b, "other", 6)[0] == Counter({"200/200": 6})
        assert served_everywhere(b, "affine", 6)[0] == Counter({"404/404": 6})
        assert fresh(a, "POST", "/v2/repository/models/other/unload").status_code == 200
        assert fresh(c, "GET", "/v2/models/other/ready").status_code == 200
        c.stop()
    finally:
        a.stop()
        b.stop()
    # nothing beside the shared idempotency store names a model set
    state = tmp / "state"
    left = sorted(p.name for p in state.rglob("*") if p.is_file())
    assert not [name for name in left if "models" in name], left


def test_a_load_answers_once_every_worker_applied_it(repo: ModelRepository) -> None:
    tmp = repo.root.parent
    server = start_server(repo, tmp, "--model-control", "explicit", "--load-model", "affine",
                          "--workers", "2", "--timeout", "1")  # fmt: skip
    try:
        seen: set[str] = set()
        for _ in range(2):
            assert fresh(server, "POST", "/v2/repository/models/other/load").status_code == 200
            codes, workers = served_everywhere(server, "other", 8)
            assert codes == Counter({"200/200": 8}), codes
            seen |= workers
            assert fresh(server, "POST", "/v2/repository/models/other/unload").status_code == 200
            codes, workers = served_everywhere(server, "other", 8)
            assert codes == Counter({"404/404": 8}), codes
            seen |= workers
        assert len(seen) == 2, seen  # both workers answered

        # gRPC, each client on a channel (and connection) of its own
        def client() -> grpcclient.InferenceServerClient:
            return grpcclient.InferenceServerClient(
                server.grpc_address, channel_args=[("grpc.use_local_subchannel_pool", 1)]
            )

        client().load_model("other")
        assert all(client().is_model_ready("other") for _ in range(10))
        client().unload_model("other")
        assert not any(client().is_model_ready("other") for _ in range(10))
        # a reload of a loaded model whose file is now broken: 400 naming why on
        # every attempt, over HTTP and gRPC; the old copy serves on every worker
        (repo.root / "affine" / "1" / "model.onnx").write_bytes(b"broken")
        for _ in range(2):
            refused = fresh(server, "POST", "/v2/repository/models/affine/load")
            assert refused.status_code == 400, refused.text
            assert "is corrupt" in refused.text and "still serves versions [1]" in refused.text
        with pytest.raises(Exception, match="is corrupt") as caught:
            client().load_model("affine")
        assert "INVALID_ARGUMENT" in str(caught.value.status())  # type: ignore[attr-defined]
        assert served_everywhere(server, "affine", 6)[0] == Counter({"200/200": 6})
        # each worker's log lines say whose
        text = server.log.read_text()
        loaded = re.findall(r"^worker (\d) \(pid \d+\): model other version 1 loaded", text, re.M)
        assert sorted(set(loaded)) == ["0", "1"], text[-2000:]
        # a worker that cannot apply a load in time (stopped) is named in a 503
        pid = server.process.pid
        workers = [int(w) for w in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        stopped = workers[1]
        os.kill(stopped, signal.SIGSTOP)
        try:
            answer = None
            for _ in range(40):  # until a connection lands on the running worker
                try:
                    with httpx.Client(timeout=4) as http:
                        answer = http.post(server.url + "/v2/repository/models/other/load")
                    break
                except httpx.TimeoutException:
                    continue
            assert answer is not None and answer.status_code == 503, answer
            assert re.search(
                rf"worker \d \(pid {stopped}\) did not apply it within 1 s", answer.text
            )
        finally:
            os.kill(stopped, signal.SIGCONT)
        deadline = time.monotonic() + 20  # running again, it applies the load
        while served_everywhere(server, "other", 4)[0] != Counter({"200/200": 4}):
            assert time.monotonic() < deadline
    finally:
        server.stop()


def _poll_host(repo: ModelRepository, tmp: Path) -> ModelHost:
    settings = ServerSettings.resolve(
        cli={"model_control": "poll", "idempotency_db": str(tmp / "idempotency.db")}, environ={}
    )
    host = ModelHost(repo, settings)
    host.load_all()
    return host


def test_version_directories_are_what_they_claim(
    repo: ModelRepository, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A version linked to another (5 -> 1) or out of the repository is refused with why;
    a version whose files fail while fresh is "incomplete", not "corrupt", until quiet."""
    host = _poll_host(repo, tmp_path)
    model = repo.root / "affine"
    os.symlink(model / "1", model / "5")
    host.control._scan(settle=False)
    entry = {e.get("version"): e for e in host.control.index()}["5"]
    assert "its version.json records version 1" in entry["reason"], entry
    assert not entry["reason"].startswith("incomplete"), entry  # permanent: never "changing"
    assert host.states["affine"].versions == [1]  # the working one serves on
    (model / "5").unlink()
    shutil.copytree(model / "1", model / "7")  # a fresh copy (files just written), not a link
    host.control._scan(settle=False)
    entry = {e.get("version"): e for e in host.control.index()}["7"]
    assert entry["reason"].startswith("model 'affine' version 7: its version.json records"), entry
    shutil.rmtree(model / "7")
    shutil.copytree(model / "1", tmp_path / "elsewhere" / "6")
    os.symlink(tmp_path / "elsewhere" / "6", model / "6")
    host.control._scan(settle=False)
    entry = {e.get("version"): e for e in host.control.index()}["6"]
    assert "outside the repository" in entry["reason"], entry
    assert not entry["reason"].startswith("incomplete"), entry
    assert host.states["affine"].versions == [1]
    (model / "6").unlink()
    # a copy under way: files newer than the quiet time fail as incomplete
    repo.add_version("affine", shifted_onnx(tmp_path / "c.onnx", 3.0))
    full = (model / "2" / "model.onnx").read_bytes()
    (model / "2" / "model.onnx").write_bytes(full[: len(full) // 2])
    caplog.clear()  # the permanent refusals above were warnings, as they should be
    with caplog.at_level("INFO", logger="edgecloud.server"):
        host.control._scan(settle=False)
    reason = {e.get("version"): e for e in host.control.index()}["2"]["reason"]
    assert reason.startswith("incomplete or still changing") and "is corrupt" in reason
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
    # quiet for longer than that: retried once and called what it is
    old = time.time() - 3600
    for file in (model / "2").iterdir():
        os.utime(file, (old, old))
    host.control._scan(settle=False)
    reason = {e.get("version"): e for e in host.control.index()}["2"]["reason"]
    assert reason.startswith("model 'affine' version 2") and "is corrupt" in reason, reason
    assert host.states["affine"].versions == [1]
    asyncio.run(host.close())
