"""Model control (none / poll / explicit) on real `edgecloud serve` processes,
driven by tritonclient over HTTP and gRPC as a Triton user would."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from edgecloud import ConfigError, ModelConfig, ModelRepository, TensorSpec
from edgecloud.server.settings import ServerSettings

from ..backends.test_hot_swap import X, expected_y, shifted_onnx
from ..models import affine_config
from .conftest import Server, start_server


def wait_until(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def infer(server: Server, model: str = "affine") -> tuple[str, np.ndarray]:
    client = httpclient.InferenceServerClient(server.http_address)
    tensor = httpclient.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    result = client.infer(model, [tensor])
    return result.get_response()["model_version"], result.as_numpy("y")


def index(server: Server) -> dict[str, dict[str, str]]:
    entries = httpclient.InferenceServerClient(server.http_address).get_model_repository_index()
    return {f"{e['name']}/{e.get('version', '')}": e for e in entries}


def slow_onnx(path: Path) -> Path:
    """y = x after 60 MatMuls by a 1024x1024 identity: ~1 s for 512 rows on one thread
    (measured: 64 GFLOP at ~60 GFLOP/s)."""
    weight = numpy_helper.from_array(np.eye(1024, dtype=np.float32), "W")
    nodes, last = [], "x"
    for i in range(60):
        nodes.append(helper.make_node("MatMul", [last, "W"], [f"h{i}"]))
        last = f"h{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1024])],
        initializer=[weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    tmp = tmp_path_factory.mktemp("mc")
    repo = ModelRepository(tmp / "repo")
    for v in (1, 2):
        onnx_file = shifted_onnx(tmp / f"v{v}.onnx", float(v))
        repo.add_version("affine", onnx_file, config=affine_config() if v == 1 else None)
    slow = ModelConfig(
        name="slow", max_batch_size=0,
        inputs=[TensorSpec(name="x", datatype="FP32", shape=(-1, 1024))],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=(-1, 1024))],
    )  # fmt: skip
    repo.add_version("slow", slow_onnx(tmp / "slow.onnx"), config=slow)
    return repo


@pytest.fixture(scope="module")
def explicit(repo: ModelRepository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("explicit")
    running = start_server(repo, tmp, "--model-control", "explicit", "--load-model", "affine")
    yield running
    running.stop()


def test_explicit_starts_with_the_named_models_only(explicit: Server) -> None:
    client = httpclient.InferenceServerClient(explicit.http_address)
    assert index(explicit) == {
        "affine/2": {"name": "affine", "version": "2", "state": "READY"},
        "slow/": {"name": "slow"},
    }
    assert client.is_model_ready("affine") and not client.is_model_ready("slow")
    assert "model_repository" in client.get_server_metadata()["extensions"]
    grpc = grpcclient.InferenceServerClient(explicit.grpc_address)
    assert "model_repository" in grpc.get_server_metadata(as_json=True)["extensions"]
    with pytest.raises(InferenceServerException, match="no model 'slow' on this server"):
        client.get_model_metadata("slow")
    ready = client.get_model_repository_index(query_params=None)
    assert len(ready) == 2
    body = httpclient.InferenceServerClient(explicit.http_address)._post(
        "v2/repository/index", json.dumps({"ready": True}), None, None
    )
    assert json.loads(body.read()) == [{"name": "affine", "version": "2", "state": "READY"}]


def test_explicit_load_and_unload_over_http_and_grpc(explicit: Server) -> None:
    http = httpclient.InferenceServerClient(explicit.http_address)
    grpc = grpcclient.InferenceServerClient(explicit.grpc_address)
    grpc.load_model("slow")
    assert http.is_model_ready("slow") and grpc.is_model_ready("slow")
    entries = grpc.get_model_repository_index(as_json=True)["models"]
    assert {"name": "slow", "version": "1", "state": "READY"} in entries
    http.unload_model("slow")
    assert not grpc.is_model_ready("slow")
    assert index(explicit)["slow/1"] == {
        "name": "slow", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"
    }  # fmt: skip
    http.load_model("slow")
    assert http.is_model_ready("slow")
    grpc.unload_model("slow", unload_dependents=True)
    assert not http.is_model_ready("slow")


def test_explicit_refusals_are_clear(explicit: Server) -> None:
    import httpx

    response = httpx.post(f"{explicit.url}/v2/repository/models/nope/load")
    assert response.status_code == 404
    assert response.json() == {"error": "no model 'nope' in the repository (models: affine, slow)"}
    assert httpx.get(f"{explicit.url}/v2/repository/index").status_code == 405
    assert httpx.post(f"{explicit.url}/v2/repository/index", content=b"[1").status_code == 400
    http = httpclient.InferenceServerClient(explicit.http_address)
    with pytest.raises(InferenceServerException, match=r"parameters \['config'\] are not supp"):
        http.load_model("affine", config=json.dumps({"max_batch_size": 4}))
    grpc = grpcclient.InferenceServerClient(explicit.grpc_address)
    with pytest.raises(InferenceServerException, match="no model 'nope'") as caught:
        grpc.unload_model("nope")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert http.is_model_ready("affine")  # nothing changed


def test_a_request_in_flight_during_unload_finishes(explicit: Server) -> None:
    """Triton's behaviour: unload stops new requests at once and lets running ones end."""
    http = httpclient.InferenceServerClient(explicit.http_address)
    http.load_model("slow")
    rows = np.ones((512, 1024), dtype=np.float32)
    done: dict[str, float | np.ndarray | BaseException] = {}

    def slow_request() -> None:
        client = httpclient.InferenceServerClient(explicit.http_address, network_timeout=60)
        tensor = httpclient.InferInput("x", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=True)
        try:
            done["y"] = client.infer("slow", [tensor]).as_numpy("y")
        except BaseException as exc:  # reported below
            done["error"] = exc
        done["at"] = time.monotonic()

    thread = threading.Thread(target=slow_request)
    thread.start()
    time.sleep(0.3)
    http.unload_model("slow")
    unloaded_at = time.monotonic()
    with pytest.raises(InferenceServerException, match="no model 'slow' on this server"):
        infer(explicit, "slow")
    thread.join(60)
    assert "error" not in done, done.get("error")
    np.testing.assert_allclose(done["y"], rows, rtol=1e-4)  # type: ignore[arg-type]
    assert unloaded_at < done["at"]  # type: ignore[operator]


def test_a_failing_explicit_reload_keeps_the_working_version(
    explicit: Server, repo: ModelRepository, tmp_path: Path
) -> None:
    repo.add_version("affine", shifted_onnx(tmp_path / "v3.onnx", 3.0))
    (repo.root / "affine" / "3" / "model.onnx").write_bytes(b"half a model")
    http = httpclient.InferenceServerClient(explicit.http_address)
    refused = r"is corrupt .*; model 'affine' still serves versions \[2\]"
    for _ in range(2):  # every time, not only the first (Triton's #3802)
        with pytest.raises(InferenceServerException, match=refused):
            http.load_model("affine")
    assert infer(explicit)[0] == "2"
    assert index(explicit)["affine/3"]["state"] == "UNAVAILABLE"
    assert "is corrupt" in index(explicit)["affine/3"]["reason"]
    shifted_onnx(repo.root / "affine" / "3" / "model.onnx", 3.0)  # the copy completes
    http.load_model("affine")
    version, y = infer(explicit)
    assert version == "3"
    np.testing.assert_allclose(y, expected_y(3), rtol=1e-5, atol=1e-5)


def test_load_model_needs_explicit_mode(repo: ModelRepository, tmp_path: Path) -> None:
    from edgecloud.server.host import ModelHost

    settings = ServerSettings.resolve(
        cli={"load_models": ["affine"], "idempotency_db": ":memory:"}, environ={}
    )
    with pytest.raises(ConfigError, match="--load-model .* is for --model-control explicit"):
        ModelHost(repo, settings)
    settings = ServerSettings.resolve(
        cli={"model_control": "poll"}, environ={"EDGECLOUD_SERVER_LOAD_MODELS": "a, b"}
    )
    assert (settings.model_control, settings.poll_interval_s) == ("poll", 5.0)
    assert settings.load_models == ["a", "b"]
    with pytest.raises(ConfigError, match="model_control"):
        ServerSettings.resolve(cli={"model_control": "sometimes"}, environ={})


def test_poll_interval_needs_poll_mode(repo: ModelRepository) -> None:
    """atk2-newuser: --poll-interval-s with explicit (or none) started and was ignored."""
    from edgecloud.server.host import ModelHost

    for mode in ("none", "explicit"):
        for environ, cli in (({}, {"poll_interval_s": 5.0}), (
            {"EDGECLOUD_SERVER_POLL_INTERVAL_S": "2"}, {}
        )):  # fmt: skip
            settings = ServerSettings.resolve(
                cli={"model_control": mode, "idempotency_db": ":memory:", **cli}, environ=environ
            )
            with pytest.raises(
                ConfigError, match=r"^--poll-interval-s .* is for --model-control poll; in '" + mode
            ):
                ModelHost(repo, settings)


def rewrite_version(repo: ModelRepository, version: int, data: bytes) -> None:
    """Replace a version's model.onnx (same number, new sha256) with its record, as a
    hand copy would: the model file first, then version.json."""
    path = repo.root / "affine" / str(version)
    (path / "model.onnx").write_bytes(data)
    record = json.loads((path / "version.json").read_text())
    record["files"]["model.onnx"] = hashlib.sha256(data).hexdigest()
    (path / "version.json").write_text(json.dumps(record))


@pytest.fixture
def polled(tmp_path: Path) -> Iterator[tuple[Server, ModelRepository]]:
    repo = ModelRepository(tmp_path / "repo")
    for v in (1, 2):
        onnx_file = shifted_onnx(tmp_path / f"v{v}.onnx", float(v))
        repo.add_version("affine", onnx_file, config=affine_config() if v == 1 else None)
    running = start_server(repo, tmp_path, "--model-control", "poll", "--poll-interval-s", "0.2")
    yield running, repo
    running.stop()


def test_poll_follows_new_changed_removed_and_broken_versions(
    polled: tuple[Server, ModelRepository], tmp_path: Path
) -> None:
    server, repo = polled
    assert infer(server)[0] == "2"
    with pytest.raises(InferenceServerException, match="not allowed in model control mode 'poll'"):
        httpclient.InferenceServerClient(server.http_address).load_model("affine")
    # a new version: loaded, then served
    repo.add_version("affine", shifted_onnx(tmp_path / "v3.onnx", 3.0))
    wait_until(lambda: infer(server)[0] == "3")
    np.testing.assert_allclose(infer(server)[1], expected_y(3), rtol=1e-5, atol=1e-5)
    # the same number with new bytes (a new sha256): reloaded
    rewrite_version(repo, 3, shifted_onnx(tmp_path / "v30.onnx", 30.0).read_bytes())
    wait_until(lambda: np.allclose(infer(server)[1], expected_y(30), atol=1e-4))
    # a broken new version: its error in the index, the working one serves on
    repo.add_version("affine", shifted_onnx(tmp_path / "v4.onnx", 4.0))
    (repo.root / "affine" / "4" / "model.onnx").write_bytes(b"garbage")
    wait_until(lambda: "is corrupt" in index(server).get("affine/4", {}).get("reason", ""))
    entry = index(server)["affine/4"]
    assert entry["state"] == "UNAVAILABLE" and "is corrupt" in entry["reason"], entry
    assert index(server)["affine/3"]["state"] == "READY"
    for _ in range(5):
        assert infer(server)[0] == "3"
    # removing the broken version changes nothing served; removing 3 falls back to 2
    import shutil

    shutil.rmtree(repo.root / "affine" / "4")
    wait_until(lambda: "affine/4" not in index(server))
    shutil.rmtree(repo.root / "affine" / "3")
    wait_until(lambda: infer(server)[0] == "2")
    assert set(index(server)) == {"affine/2"}
    # the whole model removed: gone from the index, its requests 404
    shutil.rmtree(repo.root / "affine")
    wait_until(lambda: index(server) == {})
    with pytest.raises(InferenceServerException, match="no model 'affine' on this server"):
        infer(server)


def test_poll_never_loads_half_a_copy(
    polled: tuple[Server, ModelRepository], tmp_path: Path
) -> None:
    """A version directory copied by hand: the record arrives, then the model in two
    halves. The half never serves; the whole does, once it is complete."""
    server, repo = polled
    full = shifted_onnx(tmp_path / "v5.onnx", 5.0).read_bytes()
    repo.add_version("affine", full)  # version 3, written whole by the journaled writer
    wait_until(lambda: infer(server)[0] == "3")
    target = repo.root / "affine" / "4"
    target.mkdir()
    (target / "version.json").write_text(
        json.dumps({"files": {"model.onnx": hashlib.sha256(full).hexdigest()}})
    )
    (target / "model.onnx").write_bytes(full[: len(full) // 2])
    wait_until(lambda: "is corrupt" in index(server).get("affine/4", {}).get("reason", ""))
    time.sleep(0.5)  # a few more scans
    assert infer(server)[0] == "3"
    with open(target / "model.onnx", "ab") as f:
        f.write(full[len(full) // 2 :])
    wait_until(lambda: infer(server)[0] == "4")
    np.testing.assert_allclose(infer(server)[1], expected_y(5), rtol=1e-5, atol=1e-5)
    assert index(server)["affine/4"] == {"name": "affine", "version": "4", "state": "READY"}


def test_explicit_loads_reach_every_worker(repo: ModelRepository, tmp_path: Path) -> None:
    """Workers of one run share the wanted set through its private control directory: a
    load or unload one worker receives answers once the other applied it (its short
    tick), and a worker restarted into the run rejoins the set."""
    import asyncio

    from edgecloud.server.host import ModelHost

    settings = ServerSettings.resolve(
        cli={"model_control": "explicit", "load_models": ["affine"],
             "idempotency_db": str(tmp_path / "idempotency.db")},
        environ={},
    )  # fmt: skip
    run = tmp_path / "control"
    run.mkdir()

    async def scenario() -> None:
        a = ModelHost(repo, settings, control_dir=run, worker=0)
        b = ModelHost(repo, settings, control_dir=run, worker=1)
        a.load_all()
        b.load_all()
        a.control.begin()
        b.control.begin()
        try:
            await a.control.load("slow", {})
            assert a.ready("slow") and b.ready("slow")  # applied before the answer
            await b.control.unload("affine", {})
            assert not a.ready("affine") and not b.ready("affine")
            restarted = ModelHost(repo, settings, control_dir=run, worker=1)
            restarted.load_all()
            assert restarted.ready("slow") and not restarted.ready("affine")
            await restarted.close()
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_none_mode_indexes_and_refuses_control(repo: ModelRepository, tmp_path: Path) -> None:
    server = start_server(repo, tmp_path)
    latest = str(repo.served_versions("affine")[-1])
    try:
        http = httpclient.InferenceServerClient(server.http_address)
        assert http.get_model_repository_index() == [
            {"name": "affine", "version": latest, "state": "READY"},
            {"name": "slow", "version": "1", "state": "READY"},
        ]
        grpc = grpcclient.InferenceServerClient(server.grpc_address)
        with pytest.raises(InferenceServerException, match="mode 'none'") as caught:
            grpc.unload_model("affine")
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
        with pytest.raises(InferenceServerException, match="--model-control explicit"):
            http.load_model("affine")
        assert infer(server)[0] == latest
    finally:
        server.stop()


def test_reloads_under_load_fail_no_request(tmp_path: Path) -> None:
    """20 explicit reloads, each a new sha256 under the same version number, while four
    clients send requests through the dynamic batcher: every request answers, with the
    outputs of one whole copy."""
    repo = ModelRepository(tmp_path / "repo")
    repo.add_version("affine", shifted_onnx(tmp_path / "a.onnx", 10.0), config=affine_config())
    copies = {
        shift: shifted_onnx(tmp_path / f"{shift}.onnx", shift).read_bytes()
        for shift in (10.0, 20.0)
    }
    server = start_server(repo, tmp_path, "--model-control", "explicit", "--load-model", "*")
    stop = threading.Event()
    failures: list[BaseException] = []
    answered = [0]

    def client() -> None:
        while not stop.is_set():
            try:
                _, y = infer(server)
                if not any(np.allclose(y, expected_y(0) + s, atol=1e-4) for s in (10.0, 20.0)):
                    raise AssertionError(f"outputs of no copy: {y}")
                answered[0] += 1
            except BaseException as exc:  # every failure counts
                failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        http = httpclient.InferenceServerClient(server.http_address)
        for i in range(20):
            rewrite_version(repo, 1, copies[20.0 if i % 2 == 0 else 10.0])
            http.load_model("affine")
        stop.set()
        for t in threads:
            t.join()
        assert failures == [] and answered[0] > 20
        np.testing.assert_allclose(infer(server)[1], expected_y(0) + 10.0, atol=1e-4)
    finally:
        stop.set()
        server.stop()
