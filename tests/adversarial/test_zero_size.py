"""Zero-size tensors: never a crash, one answer whatever the load, 0 rows through every combinator.

The kind: onnxruntime is not safe on zero-size dimensions — silero-vad with
``input`` [0, 512] and ``state`` [2, 0, 128] aborts the whole process
(SIGABRT, "terminate called without an active exception"), one ~190-byte
request killing ``edgecloud serve``, ``edgecloud edge`` or ``edgecloud infer``.
The rule, safe by construction (``InputValidator._check_empty`` and
``LoadedModel._empty_batch``): a zero anywhere but the batch dimension of a
batched model is refused before the runtime (400, naming tensor and
dimension); an empty batch (0 rows) never reaches the runtime nor the batcher's
queue: it is answered ``[0, *declared dims]`` per output, or 400 when an
output's shape is unknown without a run. Checked on LocalBackend (in a
subprocess), the server (JSON, binary, gRPC; the process must survive and
answer the next request), under concurrent load (one status per request kind),
the gateway, ``edgecloud infer``, and every combinator (Cascade and its
confidence measures, Fallback, Fastest, SplitBackend, Filter).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from edgecloud import (
    Cascade,
    InferRequest,
    InvalidRequestError,
    LocalBackend,
    ModelConfig,
    ModelRepository,
    ShapeMismatchError,
    TensorSpec,
    prefer_local,
    prefer_remote,
)
from edgecloud.backends.remote import RemoteBackend
from edgecloud.filter import Filter
from edgecloud.filter.triggers import AnomalyTrigger
from edgecloud.routing.confidence import CONFIDENCE
from edgecloud.routing.fastest import Fastest
from edgecloud.server.launch import ServerProcess, free_port, launch
from edgecloud.split import SplitBackend, split_model
from edgecloud.tensors import InputValidator

from ..server.conftest import Server, start_server
from ..split.conftest import branched_onnx
from ._server_helpers import make_adversarial_repo

ROOT = Path(__file__).resolve().parents[2]
#: The reported request: vad, zero-size input and state (SIGABRT before the fix).
VAD_CRASH = {
    "input": np.zeros((0, 512), np.float32),
    "state": np.zeros((2, 0, 128), np.float32),
    "sr": np.array(16000, np.int64),
}
#: Every zero-size variant of an unbatched model's inputs, each a 400.
VAD_ZERO = {
    "input [0,512], state [2,0,128]": VAD_CRASH,
    "input [0,512]": {**VAD_CRASH, "state": np.zeros((2, 1, 128), np.float32)},
    "state [2,0,128]": {**VAD_CRASH, "input": np.zeros((1, 512), np.float32)},
    "input [1,0]": {
        **VAD_CRASH,
        "input": np.zeros((1, 0), np.float32),
        "state": np.zeros((2, 1, 128), np.float32),
    },
}
VAD_OK = {
    "input": np.zeros((1, 512), np.float32),
    "state": np.zeros((2, 1, 128), np.float32),
    "sr": np.array(16000, np.int64),
}


def ragged_onnx(path: Path) -> Path:
    """y = x; x FP32 [batch, n] → y [batch, n]: the answer's width is unknown without a run."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "ragged",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def zero_repo(
    zoo_repo: ModelRepository, tmp_path_factory: pytest.TempPathFactory
) -> ModelRepository:
    """The adversarial models, ``ragged`` (batched, variable width) and the zoo's vad/digits."""
    root = tmp_path_factory.mktemp("zero-size")
    repo = make_adversarial_repo(root)
    repo.add_version(
        "ragged",
        ragged_onnx(root / "ragged.onnx"),
        config=ModelConfig(
            name="ragged",
            max_batch_size=4,
            inputs=[TensorSpec(name="x", datatype="FP32", shape=(-1,))],
            outputs=[TensorSpec(name="y", datatype="FP32", shape=(-1,))],
        ),
    )
    for name in ("vad", "digits-small", "digits-large"):
        entry = zoo_repo.get(name)
        repo.add_version(name, entry.model_path, config=zoo_repo.config(name))
    return repo


@pytest.fixture(scope="module")
def zero_server(
    zero_repo: ModelRepository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    running = start_server(zero_repo, tmp_path_factory.mktemp("zero-server"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def zero_gateway(
    zero_repo: ModelRepository, zero_server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """``edgecloud edge``: a cascade, the device small, the server large (the README's tree)."""
    tmp = tmp_path_factory.mktemp("zero-gateway")
    spec = {
        "repository": str(zero_repo.root),
        "remotes": {"cloud": {"url": zero_server.url, "timeout_s": 10}},
        "root": {"cascade": {"small": "local", "large": "cloud", "threshold": 0.72}},
    }
    (tmp / "deployment.yaml").write_text(yaml.safe_dump(spec))
    port = free_port()
    argv = [sys.executable, "-m", "edgecloud.cli", "edge", "-d", str(tmp / "deployment.yaml")]
    process = launch([*argv, "--port", str(port)], f"http://127.0.0.1:{port}", log=tmp / "gw.log")
    yield process
    process.stop()


def json_body(inputs: dict[str, np.ndarray]) -> dict[str, object]:
    def tensor(name: str, value: np.ndarray) -> dict[str, object]:
        datatype = "INT64" if value.dtype.kind == "i" else "FP32"
        return {"name": name, "shape": list(value.shape), "datatype": datatype,
                "data": value.ravel().tolist()}  # fmt: skip

    return {"inputs": [tensor(k, v) for k, v in inputs.items()]}


def post(url: str, model: str, inputs: dict[str, np.ndarray]) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{model}/infer", json=json_body(inputs), timeout=30)


# -- the rule, on the validator ------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch_limit", "spec_shape", "shape", "dimension"),
    [
        (0, (-1, -1), (0, 512), 0),
        (0, (-1, -1), (1, 0), 1),
        (0, (2, -1, 128), (2, 0, 128), 1),
        (0, (-1,), (0,), 0),
        (4, (-1,), (2, 0), 1),
        (4, (-1,), (0, 0), 1),
        (4, (-1, 3), (1, 0, 3), 1),
    ],
)
def test_zero_size_dimensions_are_refused_before_the_runtime(
    batch_limit: int, spec_shape: tuple[int, ...], shape: tuple[int, ...], dimension: int
) -> None:
    validator = InputValidator(
        "m", [TensorSpec(name="x", datatype="FP32", shape=spec_shape)], batch_limit
    )
    with pytest.raises(ShapeMismatchError, match=rf"'x'.*size 0 in dimension {dimension}"):
        validator.validate({"x": np.zeros(shape, np.float32)})


def test_an_empty_batch_is_zero_rows() -> None:
    validator = InputValidator("m", [TensorSpec(name="x", datatype="FP32", shape=(-1, 3))], 4)
    assert validator.validate({"x": np.zeros((0, 5, 3), np.float32)}) == 0


# -- never a crash: each front end survives and answers the next request -------------------


def test_local_backend_survives_in_a_subprocess(zero_repo: ModelRepository) -> None:
    """The edge path (LocalBackend), where the abort killed the device's process."""
    shapes = {case: {n: list(v.shape) for n, v in c.items()} for case, c in VAD_ZERO.items()}
    script = f"""
import numpy as np
from edgecloud import InferRequest, InvalidRequestError, LocalBackend
dtypes = {{"input": np.float32, "state": np.float32, "sr": np.int64}}
with LocalBackend({str(zero_repo.root)!r}) as local:
    for case, shapes in {json.dumps(shapes)}.items():
        inputs = {{n: np.full(s, 16000 if n == "sr" else 0, dtypes[n]) for n, s in shapes.items()}}
        try:
            local.infer(InferRequest("vad", inputs))
        except InvalidRequestError as exc:
            print("REFUSED", case, exc)
        else:
            print("answered", case)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("REFUSED") == len(VAD_ZERO), run.stdout
    assert "size 0 in dimension" in run.stdout


@pytest.mark.parametrize("front", ["json", "binary", "grpc"])
def test_server_survives_zero_size_vad(zero_server: Server, front: str) -> None:
    for case, inputs in VAD_ZERO.items():
        if front == "json":
            answer = post(zero_server.url, "vad", inputs)
            assert answer.status_code == 400, (case, answer.text)
            assert "size 0 in dimension" in answer.json()["error"]
            continue
        address = zero_server.http_address if front == "binary" else zero_server.grpc_address
        scheme = "http" if front == "binary" else "grpc"
        with (
            RemoteBackend(f"{scheme}://{address}", timeout=30) as remote,
            pytest.raises(InvalidRequestError, match="size 0 in dimension"),
        ):
            remote.infer(InferRequest("vad", inputs))
    assert zero_server.process.poll() is None, "the server died"
    ok = post(zero_server.url, "vad", VAD_OK)
    assert ok.status_code == 200, ok.text


def test_grpc_status_is_invalid_argument(zero_server: Server) -> None:
    from edgecloud.proto import inference_pb2 as pb
    from edgecloud.proto import inference_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(model_name="vad")
    for name, value in VAD_CRASH.items():
        tensor = request.inputs.add(name=name, datatype="INT64" if name == "sr" else "FP32")
        tensor.shape.extend(value.shape)
        if name == "sr":
            tensor.contents.int64_contents.append(16000)
    with (
        grpc.insecure_channel(zero_server.grpc_address) as channel,
        pytest.raises(grpc.RpcError) as failure,
    ):
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert zero_server.process.poll() is None


def test_gateway_survives_and_answers_empty_batches(
    zero_gateway: ServerProcess, zero_repo: ModelRepository
) -> None:
    """The gateway's cascade: 0 rows are the small model's empty answer, not a 500."""
    answer = post(zero_gateway.url, "vad", VAD_CRASH)
    assert answer.status_code == 400, answer.text
    assert "size 0 in dimension" in answer.json()["error"]
    empty = post(zero_gateway.url, "digits-small", {"pixels": np.zeros((0, 64), np.float32)})
    assert empty.status_code == 200, empty.text
    (output,) = empty.json()["outputs"]
    assert output["shape"] == [0, 10] and output["data"] == []
    assert zero_gateway.process.poll() is None, "the gateway died"
    one = post(zero_gateway.url, "digits-small", {"pixels": np.ones((1, 64), np.float32)})
    assert one.status_code == 200, one.text


def test_cli_infer_survives(zero_repo: ModelRepository, tmp_path: Path) -> None:
    crash = tmp_path / "vad0.json"
    crash.write_text(json.dumps(json_body(VAD_CRASH)))
    argv = [sys.executable, "-m", "edgecloud.cli", "infer", "vad", "-i", str(crash)]
    run = subprocess.run(
        [*argv, "--repo", str(zero_repo.root)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])
    assert "size 0 in dimension" in " ".join(run.stderr.split())
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps(json_body({"pixels": np.zeros((0, 64), np.float32)})))
    argv = [sys.executable, "-m", "edgecloud.cli", "infer", "digits-small", "-i", str(empty)]
    run = subprocess.run(
        [*argv, "--repo", str(zero_repo.root)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr[-2000:]


# -- an empty batch: one answer, whatever the load --------------------------------------------


#: (model, empty inputs, the status every empty request must get, its output shape if 200)
EMPTY = [
    ("affine", {"x": np.zeros((0, 4), np.float32)}, 200, [0, 3]),
    ("digits-small", {"pixels": np.zeros((0, 64), np.float32)}, 200, [0, 10]),
    ("ragged", {"x": np.zeros((0, 5), np.float32)}, 400, None),  # width unknown without a run
    ("pooled", {"x": np.zeros((0, 4), np.float32)}, 400, None),  # ``total`` has no batch dim
]


def test_empty_batches_get_one_answer_under_load(zero_server: Server) -> None:
    """Zero-row requests among ordinary ones, all at once: merged or alone, the same status."""
    rng = np.random.default_rng(0)
    jobs = []
    for _ in range(6):
        for model, inputs, _, _ in EMPTY:
            jobs.append((model, inputs))
            width = {"affine": 4, "digits-small": 64, "ragged": 5, "pooled": 4}[model]
            name = "pixels" if model == "digits-small" else "x"
            jobs.append((model, {name: rng.random((2, width), dtype=np.float32)}))
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda job: post(zero_server.url, *job), jobs))
    seen: dict[str, set[int]] = {}
    for (model, inputs), answer in zip(jobs, answers, strict=True):
        if next(iter(inputs.values())).shape[0] == 0:
            seen.setdefault(model, set()).add(answer.status_code)
            if answer.status_code == 200:
                shapes = {o["shape"][0] for o in answer.json()["outputs"]}
                assert shapes == {0}, answer.text
            else:
                assert "cannot answer an empty batch" in answer.json()["error"]
        else:
            assert answer.status_code == 200, answer.text
    assert seen == {model: {status} for model, _, status, _ in EMPTY}


@pytest.mark.parametrize(("model", "inputs", "status", "shape"), EMPTY)
def test_local_backend_and_remote_agree_on_empty_batches(
    zero_repo: ModelRepository,
    zero_server: Server,
    model: str,
    inputs: dict[str, np.ndarray],
    status: int,
    shape: list[int] | None,
) -> None:
    with LocalBackend(zero_repo) as local, RemoteBackend(zero_server.url, timeout=30) as remote:
        for backend in (local, remote):
            if status == 400:
                with pytest.raises(InvalidRequestError, match="cannot answer an empty batch"):
                    backend.infer(InferRequest(model, inputs))
                continue
            outputs = backend.infer(InferRequest(model, inputs)).outputs
            first = next(iter(outputs.values()))
            assert list(first.shape) == shape and first.dtype == np.float32
            assert all(v.shape[0] == 0 for v in outputs.values()), outputs


# -- every combinator: 0 rows in, 0 rows out, as the leaf answers ---------------------------


UNREACHABLE = "http://127.0.0.1:9"  # nothing listens: any request sent there fails
EMPTY_PIXELS = {"pixels": np.zeros((0, 64), np.float32)}


@pytest.fixture(scope="module")
def local(zero_repo: ModelRepository) -> Iterator[LocalBackend]:
    with LocalBackend(zero_repo, intra_op_threads=1) as backend:
        yield backend


@pytest.mark.parametrize("measure", sorted(CONFIDENCE))
def test_cascade_answers_zero_rows(local: LocalBackend, measure: str) -> None:
    tree = Cascade(
        local,
        RemoteBackend(UNREACHABLE, timeout=2),
        threshold=0.99,
        confidence_measure=measure,
        small_model="digits-small",
        large_model="digits-large",
    )
    answer = tree.infer(InferRequest("digits", EMPTY_PIXELS))
    assert answer.outputs["probabilities"].shape == (0, 10)
    assert "empty batch" in answer.trace.describe()


@pytest.mark.parametrize("measure", sorted(CONFIDENCE))
def test_confidence_measures_map_zero_rows_to_zero_scores(measure: str) -> None:
    scores = CONFIDENCE[measure](np.zeros((0, 10), np.float32))
    assert scores.shape == (0,)
    with pytest.raises(InvalidRequestError, match="at least 2 classes"):
        CONFIDENCE[measure](np.zeros((3, 1), np.float32))


def test_fallback_and_fastest_answer_zero_rows(local: LocalBackend) -> None:
    trees = [
        prefer_local(local, RemoteBackend(UNREACHABLE, timeout=2)),
        prefer_remote(RemoteBackend(UNREACHABLE, timeout=2), local),
        Fastest([local, local]),
    ]
    for tree in trees:
        answer = tree.infer(InferRequest("digits-small", EMPTY_PIXELS))
        assert answer.outputs["probabilities"].shape == (0, 10), tree.name


def test_split_backend_answers_zero_rows_on_the_device(tmp_path: Path) -> None:
    """A fixed split with an unreachable server: an empty batch is never sent anywhere."""
    repo = ModelRepository(tmp_path / "repo")
    from ..sample_data import add_with_samples

    add_with_samples(repo, "branched", branched_onnx(tmp_path / "branched.onnx"), max_batch_size=16)
    profile = split_model(repo, "branched", cuts=["cut3"], repeats=1).profile
    with LocalBackend(repo, intra_op_threads=1) as device:
        split = SplitBackend(
            device, RemoteBackend(UNREACHABLE, timeout=2), profile, fixed="cut3", explore=0.0
        )
        answer = split.infer(InferRequest("branched", {"x": np.zeros((0, 8), np.float32)}))
    assert answer.outputs["y"].shape == (0, 4)
    assert "empty batch" in answer.trace.describe()


def test_filter_refuses_an_empty_chunk_and_keeps_streaming() -> None:
    normal = np.random.default_rng(0).standard_normal((32, 4))
    stream = Filter(AnomalyTrigger(chunk_s=0.1).fit(normal))
    for empty in (np.zeros(0, np.float32), np.zeros((0, 4), np.float32)):
        with pytest.raises(InvalidRequestError, match="empty chunk"):
            stream.feed(empty)
    assert stream.stats.chunks == 0
    stream.feed(np.zeros((8, 4), np.float32))
    assert stream.stats.chunks == 1
