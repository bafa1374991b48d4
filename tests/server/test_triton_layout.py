"""A Triton model repository (config.pbtxt), written in the test, served by a real
``edgecloud serve --repo`` and asked with tritonclient over HTTP and gRPC: every
answer is what Triton's own config implies."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from edgecloud import ModelRepository

from ..trees import tree_sha256
from ..triton_layout import run_onnx, write_triton_repo
from .conftest import Server, start_server

ENSEMBLE = """
name: "pipeline"
platform: "ensemble"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
ensemble_scheduling { step [ { model_name: "classifier" model_version: -1
  input_map { key: "x" value: "x" } output_map { key: "y" value: "y" } } ] }
"""


@pytest.fixture(scope="module")
def triton_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_triton_repo(tmp_path_factory.mktemp("triton") / "models")
    (root / "pipeline").mkdir()
    (root / "pipeline" / "config.pbtxt").write_text(ENSEMBLE)
    return root


@pytest.fixture(scope="module")
def served(triton_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    before = tree_sha256(triton_repo)
    server = start_server(ModelRepository(triton_repo), tmp_path_factory.mktemp("log"))
    try:
        yield server
    finally:
        server.stop()
    assert tree_sha256(triton_repo) == before, "serving wrote into the Triton repository"


def http(server: Server) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(server.http_address)


def grpc(server: Server) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(server.grpc_address)


def tensor(module: object, x: np.ndarray) -> object:
    made = module.InferInput("x", list(x.shape), "FP32")  # type: ignore[attr-defined]
    made.set_data_from_numpy(x)
    return made


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


def test_metadata_is_what_config_pbtxt_declares(served: Server) -> None:
    classifier = {
        "name": "classifier",
        "versions": ["2"],  # version_policy default: latest 1
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "z", "datatype": "FP32", "shape": [-1, -1]},
        ],
    }
    assert http(served).get_model_metadata("classifier") == classifier
    fixed = http(served).get_model_metadata("fixed")
    assert fixed["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [2, 4]}]
    assert fixed["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [2, 3]}]
    auto = http(served).get_model_metadata("auto")  # no config.pbtxt: completed from the graph
    assert auto["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in auto["outputs"]] == ["y", "z"]

    meta = grpc(served).get_model_metadata("classifier", as_json=True)
    assert meta["versions"] == ["2"] and meta["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("x", "FP32", ["-1", "4"])  # protobuf's JSON writes int64 as strings
    ]
    fixed_grpc = grpc(served).get_model_metadata("fixed")
    assert list(fixed_grpc.inputs[0].shape) == [2, 4]


def test_model_config_endpoint_reflects_batching_and_policy(served: Server) -> None:
    config = http(served).get_model_config("classifier")
    assert config["max_batch_size"] == 8
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    assert config["dynamic_batching"] == {
        "max_queue_delay_microseconds": 2000,
        "preferred_batch_size": [4],
    }
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert http(served).get_model_config("fixed")["max_batch_size"] == 0
    pinned = http(served).get_model_config("pinned")
    assert pinned["version_policy"] == {"specific": {"versions": [1, 3]}}
    with pytest.raises(InferenceServerException) as raised:  # KServe v2 gRPC has no config
        grpc(served).get_model_config("classifier")
    assert raised.value.status() == "StatusCode.UNIMPLEMENTED"
    auto = http(served).get_model_config("auto")  # Triton's auto-complete: 4, batching on
    assert auto["max_batch_size"] == 4 and auto["dynamic_batching"]["preferred_batch_size"] == []


def test_version_policy_decides_what_is_served(served: Server, triton_repo: Path) -> None:
    assert http(served).get_model_metadata("pinned")["versions"] == ["1", "3"]
    assert grpc(served).get_model_metadata("pinned").versions == ["1", "3"]
    x = rows(3, seed=1)
    for version in ("1", "3"):
        want = run_onnx(triton_repo / "pinned" / version / "linear.onnx", x)["y"]
        for client, module in ((http(served), triton_http), (grpc(served), triton_grpc)):
            got = client.infer("pinned", [tensor(module, x)], model_version=version)
            np.testing.assert_array_equal(got.as_numpy("y"), want)
    newest = http(served).infer("pinned", [tensor(triton_http, x)])  # no version: the newest
    assert newest.get_response()["model_version"] == "3"
    for version, model in (("2", "pinned"), ("1", "classifier")):  # on disk, not served
        with pytest.raises(InferenceServerException) as raised:
            http(served).get_model_metadata(model, version)
        assert raised.value.status() == "404", raised.value
        with pytest.raises(InferenceServerException) as raised:
            http(served).infer(model, [tensor(triton_http, x)], model_version=version)
        assert raised.value.status() == "404", raised.value
        with pytest.raises(InferenceServerException) as raised:
            grpc(served).infer(model, [tensor(triton_grpc, x)], model_version=version)
        assert raised.value.status() == "StatusCode.NOT_FOUND", raised.value


def test_answers_equal_onnxruntime_on_the_same_file(served: Server, triton_repo: Path) -> None:
    x = rows(5, seed=2)
    want = run_onnx(triton_repo / "classifier" / "2" / "model.onnx", x)
    for client, module in ((http(served), triton_http), (grpc(served), triton_grpc)):
        got = client.infer("classifier", [tensor(module, x)])
        for name in ("y", "z"):
            np.testing.assert_array_equal(got.as_numpy(name), want[name])
    fixed = rows(2, seed=3)
    want_fixed = run_onnx(triton_repo / "fixed" / "1" / "model.onnx", fixed)["y"]
    got_fixed = grpc(served).infer("fixed", [tensor(triton_grpc, fixed)])
    np.testing.assert_array_equal(got_fixed.as_numpy("y"), want_fixed)


def batch_sizes(server: Server) -> dict[str, float]:
    """The classifier's ``edgecloud_batch_size`` histogram: bucket bound -> count."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {
        line.split('le="')[1].split('"')[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("edgecloud_batch_size_bucket") and 'model="classifier"' in line
    }


def test_concurrent_requests_batch_and_split_back_exactly(
    served: Server, triton_repo: Path
) -> None:
    """dynamic_batching merges concurrent one-row requests into runs of at most
    max_batch_size 8; each request still gets exactly its own row's answer.

    Whether two requests meet in the server is timing (a fast model's requests
    merge when they reach the server in one event-loop iteration: a loaded
    machine can serve 32 of them one by one), so bursts are sent until one
    merges, at most 5; every answer of every burst is checked."""
    model = triton_repo / "classifier" / "2" / "model.onnx"
    before = batch_sizes(served)

    def ask(x: np.ndarray) -> np.ndarray:
        result = http(served).infer("classifier", [tensor(triton_http, x)])
        return np.asarray(result.as_numpy("y"))

    added: dict[str, float] = {}
    for burst in range(5):
        inputs = [rows(1, seed=10 + 32 * burst + i) for i in range(32)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, inputs))
        for x, got in zip(inputs, answers, strict=True):
            np.testing.assert_allclose(got, run_onnx(model, x)["y"], rtol=1e-6, atol=1e-6)
        after = batch_sizes(served)
        added = {bound: after[bound] - before.get(bound, 0.0) for bound in after}
        assert added["8.0"] == added["+Inf"], f"a run exceeded max_batch_size 8: {added}"
        if added["1.0"] < added["+Inf"]:
            break
    assert added["1.0"] < added["+Inf"], f"no request was merged in 5 bursts: {added}"


def test_an_unbatched_model_refuses_another_shape(served: Server) -> None:
    for rows_sent in (1, 3):  # dims [2, 4] with max_batch_size 0: exactly 2 rows
        with pytest.raises(InferenceServerException) as raised:
            http(served).infer("fixed", [tensor(triton_http, rows(rows_sent))])
        assert raised.value.status() == "400", raised.value


def test_a_batch_over_max_batch_size_runs_in_slices(served: Server, triton_repo: Path) -> None:
    """Where Triton refuses a batch of 9 for max_batch_size 8, edgecloud runs it 8 rows
    at a time (LoadedModel.run): the rows' answers are still onnxruntime's."""
    x = rows(9, seed=4)
    got = http(served).infer("classifier", [tensor(triton_http, x)]).as_numpy("y")
    want = run_onnx(triton_repo / "classifier" / "2" / "model.onnx", x)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_a_refused_model_is_not_ready_and_hides_no_other(served: Server) -> None:
    assert not http(served).is_model_ready("pipeline")
    assert not grpc(served).is_model_ready("pipeline")
    for model in ("classifier", "fixed", "pinned", "auto"):
        assert http(served).is_model_ready(model), model
        assert grpc(served).is_model_ready(model), model
    answer = httpx.get(f"{served.url}/v2/models/pipeline", timeout=10)
    assert answer.status_code >= 400 and "ensemble" in answer.json()["error"], answer.text
