"""A new user's mistakes get one clear line, and inspection never changes anything.

Kinds covered (the hostile new-user review of issues 13 and 14):

- read-only commands never write: ``edgecloud outbox PATH`` on files that are
  not outboxes (text, another SQLite database, an empty file, a damaged
  outbox) leaves them byte for byte, with no ``-wal``/``-shm`` beside them;
- every path the user gives is checked where it is read: a directory for a
  file, a file for a directory, a missing path, an unreadable file (as an
  unprivileged user), across the commands that take paths;
- one strict decoder on every front end: ``infer --input`` JSON goes through
  the wire's decoder (fractional/str/bool integers, out-of-range floats, OIP
  bodies with strings) and arrays of another dtype are refused;
- the gateway serves exactly its deployment's model names (404 on every
  endpoint otherwise);
- every network wait of a RemoteBackend request shares one budget (HTTP
  sync/async, gRPC; first call with the extensions probe and later ones)
  against a server stopped with SIGSTOP;
- caller strings echoed in errors are clipped (a 10 KB model name is still a
  NOT_FOUND / 404, not a broken stream);
- compress refuses non-finite tolerances and calibration files that are not
  .npz.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import yaml

from edgecloud import InferRequest, ModelRepository, RemoteBackend, RequestContext
from edgecloud.errors import (
    DeadlineExceededError,
    EdgecloudError,
    InvalidRequestError,
    clip,
)
from edgecloud.gateway import entry_models
from edgecloud.io import load_inputs
from edgecloud.proto import inference_pb2 as pb
from edgecloud.proto import inference_pb2_grpc as pb_grpc
from edgecloud.routing.outbox import Outbox
from edgecloud.server.launch import free_port, launch

from ..conftest import ROOT
from ..models import make_repo
from ..server.conftest import Server, start_server


def cli(
    *argv: str | Path, cwd: Path | None = None, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``edgecloud ARGV`` as a real process (as ``user`` via setpriv when given)."""
    command = [sys.executable, "-m", "edgecloud.cli", *map(str, argv)]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=cwd, env=env
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    return make_repo(tmp_path_factory.mktemp("hygiene"))


# -- outbox inspection is read-only ------------------------------------------------


def _text(path: Path) -> None:
    path.write_text("repository: model-repo\nroot: local\n")


def _other_db(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (x TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
    db.close()


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _damaged_outbox(path: Path) -> None:
    box = Outbox(path)
    box.close()
    data = bytearray(path.read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)  # header intact, every page garbage
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_text, "not an SQLite database"),
        (_other_db, "not an outbox"),
        (_empty, "not an SQLite database"),
        (_damaged_outbox, "left untouched"),
    ],
    ids=["yaml-file", "other-sqlite-db", "empty-file", "damaged-outbox"],
)
def test_outbox_inspection_never_touches_a_file_that_is_not_an_outbox(
    tmp_path: Path, make: object, says: str
) -> None:
    path = tmp_path / "deployment.yaml"
    make(path)  # type: ignore[operator]
    before, listing = digest(path), sorted(os.listdir(tmp_path))
    line = one_line_error(cli("outbox", path), str(path))
    assert says in line or "corrupt" in line, line
    assert digest(path) == before and sorted(os.listdir(tmp_path)) == listing


def test_outbox_inspection_of_a_real_outbox_reads_it_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path).close()
    before, listing = digest(path), sorted(os.listdir(tmp_path))
    result = cli("outbox", path)
    assert result.returncode == 0, result.stderr
    assert "pending" in result.stdout and "quarantined" in result.stdout
    assert digest(path) == before and sorted(os.listdir(tmp_path)) == listing  # no -wal/-shm


# -- every path is checked where it is read ----------------------------------------


def _commands(repo: Path, good_file: Path, path: Path) -> dict[str, list[str | Path]]:
    """Commands that read ``path`` as a file (key starts with f:) or a directory (d:)."""
    return {
        "f:serve --config": ["serve", "--repo", repo, "--config", path, "--print-config"],
        "f:edge -d": ["edge", "-d", path, "--port", str(free_port())],
        "f:edge --config": ["edge", "-d", good_file, "--config", path, "--print-config"],
        "f:calibrate -d": ["calibrate", "-d", path],
        "f:advise": ["advise", path, "--no-plot"],
        "f:filter --input": ["filter", "--input", path, "--trigger", "frame-diff"],
        "f:split --tail-profile": ["split", "affine", "--repo", repo, "--tail-profile", path],
        "f:infer --input": ["infer", "affine", "--repo", repo, "--input", path],
        "f:outbox": ["outbox", path],
        "d:serve --repo": ["serve", "--repo", path, "--http-port", str(free_port())],
        "d:infer --repo": ["infer", "affine", "--repo", path, "--input", good_file],
        "d:zoo build --repo": ["zoo", "build", "--repo", path, "--only", "digits-small"],
        "d:split --repo": ["split", "affine", "--repo", path],
    }


CASES = [
    (name, wrong)
    for name in _commands(Path(), Path(), Path())
    for wrong in (("file-for-dir",) if name.startswith("d:") else ("dir-for-file", "missing"))
]


@pytest.mark.parametrize(("command", "wrong"), CASES, ids=[f"{c}-{w}" for c, w in CASES])
def test_a_path_of_the_wrong_kind_is_one_line_naming_it(
    repo: ModelRepository, tmp_path: Path, command: str, wrong: str
) -> None:
    good_file = tmp_path / "good.json"
    good_file.write_text(json.dumps({"x": [[0.0, 0.5, 1.0, 1.5]]}))
    path = {
        "dir-for-file": tmp_path / "a-directory",
        "file-for-dir": tmp_path / "a-file",
        "missing": tmp_path / "missing.yaml",
    }[wrong]
    if wrong == "dir-for-file":
        path.mkdir()
    if wrong == "file-for-dir":
        path.write_text("not a directory\n")
    argv = _commands(repo.root, good_file, path)[command]
    expect = {"dir-for-file": "is a directory; expected a file",
              "file-for-dir": "is not a directory; expected a directory",
              "missing": "does not exist"}[wrong]  # fmt: skip
    one_line_error(cli(*argv, cwd=tmp_path), str(path), expect)


def test_serve_with_a_file_as_repository_is_refused_before_binding(tmp_path: Path) -> None:
    path = tmp_path / "hostname"
    path.write_text("box\n")
    one_line_error(cli("serve", "--repo", path, "--http-port", str(free_port())), "not a directory")


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv to drop privileges")
def test_an_unreadable_file_is_one_line_naming_it(repo: ModelRepository, tmp_path: Path) -> None:
    """root ignores permissions, so run as nobody; the files live where nobody can reach."""
    place = Path("/tmp") / f"edgecloud-unreadable-{os.getpid()}"
    place.mkdir(mode=0o755, exist_ok=True)
    try:
        place.chmod(0o755)
        secret = place / "deployment.yaml"
        secret.write_text("repository: x\nroot: local\n")
        secret.chmod(0o000)
        probe = cli("version", user="65534", cwd=place)
        if probe.returncode != 0:
            pytest.skip(f"cannot run edgecloud as nobody here: {probe.stderr[-200:]}")
        for argv in (["calibrate", "-d", secret], ["outbox", secret], ["advise", secret]):
            result = cli(*argv, user="65534", cwd=place)
            # typer's own check (exit 2, "is not readable") or ours (exit 1, "cannot be read")
            assert result.returncode in (1, 2), result.stderr
            assert "internal error" not in result.stderr and "Traceback" not in result.stderr
            text = " ".join(result.stderr.split())
            assert str(secret) in text and ("not readable" in text or "cannot be read" in text)
    finally:
        shutil.rmtree(place, ignore_errors=True)


# -- infer --input: one strict decoder -----------------------------------------------


def _json(tmp: Path, body: object) -> Path:
    path = tmp / "in.json"
    path.write_text(json.dumps(body))
    return path


TWO = "two-input"  # a FP32[2], b INT64[2]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"a": [[0.5, 0.5]], "b": [[1.5, 2]]}, "element 0 of INT64 data is 1.5"),
        ({"a": [[0.5, 0.5]], "b": [[1, "7"]]}, "element 1 of INT64 data is '7'"),
        ({"a": [[0.5, 0.5]], "b": [[True, 1]]}, "element 0 of INT64 data is True"),
        ({"a": [[0.5, 0.5]], "b": [[1, 1e30]]}, "element 1 of INT64"),
        ({"a": [[1e39, 0.5]], "b": [[1, 2]]}, "beyond the range of FP32"),
        ({"a": [["0.5", 0.5]], "b": [[1, 2]]}, "element 0 of FP32 data is '0.5'"),
        ({"a": [[0.5, 0.5], [0.5]], "b": [[1, 2], [3, 4]]}, "does not match shape"),
        ({"a": [[0.5, 0.5]], "nope": [[1, 2]]}, "has no input 'nope'"),
        (
            {
                "inputs": [
                    {"name": "a", "shape": [1, 2], "datatype": "FP32", "data": ["0.5", "1"]},
                    {"name": "b", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
                ]
            },
            "element 0 of FP32 data is '0.5'",
        ),
        (
            {
                "inputs": [
                    {"name": "a", "shape": [1, 2], "datatype": "FP64", "data": [0.5, 1]},
                    {"name": "b", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
                ]
            },
            "sent as FP64 but model 'two-input' declares FP32",
        ),
    ],
    ids=[
        "fraction-int",
        "str-int",
        "bool-int",
        "1e30-int",
        "1e39-fp32",
        "str-fp32",
        "ragged",
        "unknown-input",
        "oip-strings",
        "oip-wrong-datatype",
    ],
)
def test_json_input_is_decoded_strictly(
    repo: ModelRepository, tmp_path: Path, body: object, needle: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        load_inputs(_json(tmp_path, body), repo.config(TWO))
    assert needle in info.value.message


def test_valid_json_inputs_decode_exactly(repo: ModelRepository, tmp_path: Path) -> None:
    arrays = load_inputs(_json(tmp_path, {"a": [[0.5, 1]], "b": [[1, 2]]}), repo.config(TWO))
    assert arrays["a"].dtype == np.float32 and arrays["b"].dtype == np.int64
    assert arrays["b"].tolist() == [[1, 2]] and arrays["a"].shape == (1, 2)
    a = {"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 1]}
    b = {"name": "b", "shape": [1, 2], "datatype": "INT64", "data": [[1, 2]]}  # nested is fine
    oip = {"inputs": [a, b]}
    arrays = load_inputs(_json(tmp_path, oip), repo.config(TWO))
    assert arrays["b"].tolist() == [[1, 2]]


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"a": np.zeros((1, 2)), "b": np.zeros((1, 2), np.int64)}, "'a' is float64"),
        ({"a": np.zeros((1, 2), np.float32), "b": np.zeros((1, 2), np.int32)}, "'b' is int32"),
    ],
    ids=["float64-for-fp32", "int32-for-int64"],
)
def test_arrays_of_another_dtype_are_refused_not_cast(
    repo: ModelRepository, tmp_path: Path, arrays: dict[str, np.ndarray], needle: str
) -> None:
    path = tmp_path / "in.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match=needle):
        load_inputs(path, repo.config(TWO))


def test_the_cli_refuses_coercions_in_one_line(repo: ModelRepository, tmp_path: Path) -> None:
    bad = _json(tmp_path, {"a": [[0.5, 0.5]], "b": [[1, 1e30]]})
    one_line_error(cli("infer", TWO, "--repo", repo.root, "--input", bad), "INT64")
    np.save(tmp_path / "x.npy", np.zeros((1, 4)))
    one_line_error(cli("infer", "affine", "--repo", repo.root, "--input", tmp_path / "x.npy"),
                   "float64", "FP32")  # fmt: skip


# -- the gateway serves exactly its deployment's names --------------------------------


def test_entry_models_follow_the_tree() -> None:
    cascade = {"cascade": {"small": "local", "large": "cloud", "threshold": 0.5,
                           "small_model": "s", "large_model": "l"}}  # fmt: skip
    assert entry_models("local") is None and entry_models("cloud") is None
    assert entry_models(cascade) == {"s"}
    assert entry_models({"guard": {"inner": cascade, "rules": {"personal": "local"}}}) == {"s"}
    assert entry_models({"split": {"model": "r", "remote": "cloud"}}) == {"r"}
    both = {
        "fallback": {"primary": cascade, "secondary": {"split": {"model": "r", "remote": "cloud"}}}
    }
    assert entry_models(both) == {"s", "r"}
    assert entry_models({"prefer_remote": {"remote": "cloud", "local": "local"}}) is None


@pytest.fixture(scope="module")
def cascade_gateway(
    repo: ModelRepository, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("gateway-names")
    spec = {
        "repository": str(repo.root),
        "root": {"cascade": {"small": "local", "large": "local", "threshold": 0.5,
                             "output": "z", "small_model": "affine", "large_model": "affine"}},
    }  # fmt: skip
    (tmp / "d.yaml").write_text(yaml.safe_dump(spec))
    port = free_port()
    argv = [sys.executable, "-m", "edgecloud.cli", "edge", "-d", str(tmp / "d.yaml"),
            "--port", str(port)]  # fmt: skip
    process = launch(argv, f"http://127.0.0.1:{port}", log=tmp / "edge.log")
    yield process.url
    process.stop()


BODY = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5] * 4}]}


@pytest.mark.parametrize("name", ["anything", "two-input", "x" * 5000])
def test_the_gateway_answers_404_for_a_name_it_does_not_serve(
    cascade_gateway: str, name: str
) -> None:
    base = f"{cascade_gateway}/v2/models/{name}"
    replies = [httpx.post(f"{base}/infer", json=BODY, timeout=30)]
    replies += [httpx.get(f"{base}{end}", timeout=30) for end in ("", "/ready", "/config")]
    for reply in replies:
        assert reply.status_code == 404, (reply.request.url, reply.text[:200])
        assert len(reply.text) < 600  # the name is quoted clipped
    assert "it serves: affine" in replies[0].json()["error"]


def test_the_gateway_serves_its_entry_name(cascade_gateway: str) -> None:
    base = f"{cascade_gateway}/v2/models/affine"
    reply = httpx.post(f"{base}/infer", json=BODY, timeout=30)
    assert reply.status_code == 200 and reply.json()["model_name"] == "affine"
    assert httpx.get(base, timeout=30).json()["inputs"][0]["name"] == "x"
    assert httpx.get(f"{base}/ready", timeout=30).status_code == 200


# -- RemoteBackend: one budget per request against a hung server -----------------------


@pytest.fixture(scope="module")
def server(repo: ModelRepository, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(repo, tmp_path_factory.mktemp("hygiene-server"))
    yield running
    running.stop()


def _request(deadline: float | None = None) -> InferRequest:
    context = RequestContext.with_timeout(deadline) if deadline else RequestContext()
    return InferRequest("affine", {"x": np.full((1, 4), 0.5, np.float32)}, context=context)


def _timed(call: object) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()  # type: ignore[operator]
    except EdgecloudError as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def _check_budgets(kind: str, make: Callable[[], RemoteBackend]) -> None:
    remote = make()  # fresh: the first call also probes the server's extensions
    for attempt in range(2):
        took, error = _timed(lambda: remote.infer(_request()))
        assert isinstance(error, DeadlineExceededError), (kind, attempt, error)
        assert took < 1.5, (kind, attempt, took)  # was 2.0 s with timeout=1.0
    took, error = _timed(lambda: remote.infer(_request(deadline=0.1)))
    assert isinstance(error, DeadlineExceededError) and took < 0.5, (kind, took)  # was 1-2 s
    remote.close()
    fresh = make()
    took, error = _timed(lambda: asyncio.run(fresh.infer_async(_request(deadline=0.2))))
    assert isinstance(error, DeadlineExceededError) and took < 0.6, (kind, took)
    took, error = _timed(lambda: asyncio.run(fresh.infer_async(_request())))
    assert isinstance(error, DeadlineExceededError) and took < 1.5, (kind, took)
    fresh.close()


def test_every_wait_of_a_request_shares_one_budget_against_a_stopped_server(
    server: Server,
) -> None:
    server.process.send_signal(signal.SIGSTOP)
    try:
        _check_budgets("http", lambda: RemoteBackend(server.url, timeout=1.0))
        _check_budgets("grpc", lambda: RemoteBackend(f"grpc://{server.grpc_address}", timeout=1.0))
    finally:
        server.process.send_signal(signal.SIGCONT)
    remote = RemoteBackend(server.url, timeout=5.0)  # and it serves again
    assert remote.infer(_request()).outputs["z"].shape == (1, 3)
    remote.close()


# -- caller strings in errors are clipped ----------------------------------------------


def test_clip_keeps_messages_short() -> None:
    assert clip("digits") == "'digits'"
    long = clip("x" * 10_000)
    assert len(long) == 100 and long.endswith("...'")


def test_a_huge_model_name_is_still_a_clean_not_found(server: Server) -> None:
    name = "x" * 10_000
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name=name)
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(np.zeros((1, 4), np.float32).tobytes())
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
        assert tensor.name == "x"
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, info.value.details()
    assert len(info.value.details()) < 400
    reply = httpx.post(f"{server.url}/v2/models/{name}/infer", json=BODY, timeout=30)
    assert reply.status_code == 404 and len(reply.text) < 400


# -- compress: tolerances and calibration files ---------------------------------------


@pytest.mark.parametrize("tolerance", ["inf", "nan", "-1"])
def test_compress_refuses_a_tolerance_that_is_not_a_finite_number(
    repo: ModelRepository, tolerance: str
) -> None:
    result = cli("compress", "affine", "--repo", repo.root, "-m", "int8-dynamic",
                 f"--tolerance={tolerance}", "--data", "random")  # fmt: skip
    one_line_error(result, "tolerance must be a number >= 0 and finite")


def test_a_calibration_file_that_is_not_npz_says_so(tmp_path: Path) -> None:
    from edgecloud.compress.methods import calibration_batches

    entry = make_repo(tmp_path).get("affine")
    text = tmp_path / "hostname"
    text.write_text("box\n")
    np.save(tmp_path / "x.npy", np.zeros((2, 4), np.float32))
    for path in (text, tmp_path / "x.npy"):
        with pytest.raises(EdgecloudError, match=r"is not a .npz archive|single .npy array"):
            calibration_batches(entry, path)
    with pytest.raises(EdgecloudError, match="is a directory; expected a file"):
        calibration_batches(entry, tmp_path)
