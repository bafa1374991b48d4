"""No tensor of a request that may not leave ever reaches a server (issue 14, kind 3).

A recording front (``_privacy_helpers``, its own process) sits between the
device and a real ``edgecloud serve``: every request that crosses its socket
is kept. Each case sends requests whose inputs are fresh random values, one per
sensitivity, down one path by which a tensor can leave — direct, escalation,
fallback either way, hedging, a split (planned and probed), filter
forwarding, the outbox drain, and the edge gateway running each deployment
example of the README — and then searches every recorded body (binary bytes
and decoded JSON values) for any row of those inputs. Public data must arrive
(the path really is exercised); personal data under a ``local`` rule and
restricted data never; under a ``features`` rule no raw input does.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from edgecloud import (
    FunctionBackend,
    InferRequest,
    LocalBackend,
    ModelRepository,
    PrivacyError,
    RemoteBackend,
    UnavailableError,
)
from edgecloud.backends.base import Backend
from edgecloud.filter import Filter
from edgecloud.repository import config_from_onnx
from edgecloud.routing import Cascade, Fallback, Fastest, Outbox, prefer_remote
from edgecloud.routing.privacy import Guard
from edgecloud.server.launch import ServerProcess, free_port, launch
from edgecloud.split import ALL_LOCAL, ALL_REMOTE, Link, SplitBackend, SplitProfile, split_model
from edgecloud.split.profile import default_profile_path
from edgecloud.tensors import RequestContext, Sensitivity

from ..conftest import ROOT
from ..models import event_sink_config, event_sink_onnx
from ..server.conftest import Server, start_server
from ..split.test_backend import gated_onnx
from . import _privacy_helpers as recorder

LEVELS = [s.value for s in Sensitivity]
FAST = Link(rtt_s=0.0, bandwidth_bps=10e9)
SEEDS = itertools.count(1000)


def secret(*shape: int) -> np.ndarray:
    """Fresh random FP32 values: any row found in a recorded body came from this request."""
    return np.random.default_rng(next(SEEDS)).standard_normal(shape).astype(np.float32)


def classifier_onnx(path: Path, seed: int) -> Path:
    """probabilities = softmax(x W / 100): x FP32 [batch, 4] → [batch, 3], nearly uniform.

    Its confidence stays near 1/3, so a cascade escalates every row.
    """
    weights = np.random.default_rng(seed).standard_normal((4, 3)).astype(np.float32) / 100
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@dataclass
class World:
    repo: ModelRepository
    server: Server
    proxy: ServerProcess
    record: Path
    profile: SplitProfile
    tmp: Path

    @property
    def url(self) -> str:
        """The recording front: what every device-side client talks to."""
        return self.proxy.url

    def mark(self) -> int:
        return len(self.record.read_text().splitlines()) if self.record.exists() else 0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """digits-small/-large (near-uniform classifiers), events, gated (split at cut1), served."""
    tmp = tmp_path_factory.mktemp("egress")
    repo = ModelRepository(tmp / "model-repo")
    for seed, name in enumerate(("digits-small", "digits-large")):
        path = classifier_onnx(tmp / f"{name}.onnx", seed)
        repo.add_version(name, path, config=config_from_onnx(path, name, max_batch_size=8))
    repo.add_version("events", event_sink_onnx(tmp / "events.onnx"), config=event_sink_config())
    gated = gated_onnx(tmp / "gated.onnx")
    repo.add_version("gated", gated, config=config_from_onnx(gated, "gated", max_batch_size=8))
    split = split_model(repo, "gated", codecs=("fp32",), cuts=["cut1"], repeats=1)
    times = {ALL_LOCAL: (0.2, 0.0), ALL_REMOTE: (0.0, 0.3), "cut1": (0.01, 0.01)}
    profile = dataclasses.replace(split.profile, candidates=[
        dataclasses.replace(c, head_s=times[c.name][0], tail_s=times[c.name][1])
        for c in split.profile.candidates
    ])  # fmt: skip
    profile.save(default_profile_path(repo, "gated"))
    server = start_server(repo, tmp)
    record, port = tmp / "arrivals.jsonl", free_port()
    argv = [sys.executable, recorder.__file__, "--port", str(port), "--upstream", server.url,
            "--record", str(record)]  # fmt: skip
    proxy = launch(argv, f"http://127.0.0.1:{port}", log=tmp / "proxy.log")
    yield World(repo, server, proxy, record, profile, tmp)
    proxy.stop()
    server.stop()


# -- the paths ------------------------------------------------------------------


def context(level: str, **marks: bool) -> RequestContext:
    return RequestContext(sensitivity=Sensitivity(level), **marks)


def remote(world: World) -> RemoteBackend:
    return RemoteBackend(world.url, timeout=5.0)


def local(world: World) -> LocalBackend:
    return LocalBackend(world.repo, intra_op_threads=1)


def personal_local(inner: Backend) -> Guard:
    return Guard(inner, rules={"personal": "local", "public": "any"})


def ask(backend: Backend, model: str, level: str, **inputs: np.ndarray) -> None:
    """One request; a refusal where nothing else may answer is a fine outcome here."""
    try:
        backend.infer(InferRequest(model, inputs, context=context(level)))
    except PrivacyError:
        pass
    finally:
        backend.close()


def direct(world: World, level: str) -> list[np.ndarray]:
    x = secret(2, 4)
    ask(remote(world), "digits-large", level, x=x)
    return [x]


def guarded_direct(world: World, level: str) -> list[np.ndarray]:
    x = secret(2, 4)
    ask(personal_local(remote(world)), "digits-large", level, x=x)
    return [x]


def fallback_prefer_remote(world: World, level: str) -> list[np.ndarray]:
    x = secret(2, 4)
    ask(personal_local(prefer_remote(remote(world), local(world))), "digits-large", level, x=x)
    return [x]


def fallback_prefer_local(world: World, level: str) -> list[np.ndarray]:
    def down(_: Any) -> dict[str, np.ndarray]:
        raise UnavailableError("the device model is not loaded")

    x = secret(2, 4)
    tree = Fallback(FunctionBackend(down, name="local"), remote(world), name="prefer_local")
    ask(personal_local(tree), "digits-large", level, x=x)
    return [x]


def cascade(large: Callable[[World], Backend]) -> Callable[[World, str], list[np.ndarray]]:
    def run(world: World, level: str) -> list[np.ndarray]:
        x = secret(3, 4)
        tree = Cascade(local(world), large(world), threshold=0.9, small_model="digits-small",
                       large_model="digits-large")  # fmt: skip
        ask(personal_local(tree), "digits-small", level, x=x)
        return [x]

    return run


def hedged(world: World, level: str) -> list[np.ndarray]:
    """The device path is chosen, then stalls: the hedge goes to the server.

    Estimates as measured (device 1 ms, server 50 ms) make the device first and
    its p95 the hedge delay; the device then takes 300 ms.
    """

    def device(inputs: Any) -> dict[str, np.ndarray]:
        time.sleep(0.3)
        return {"probabilities": np.full((len(inputs["x"]), 3), 1 / 3, np.float32)}

    fastest = Fastest([FunctionBackend(device, name="device"), remote(world)], hedge=True,
                      explore=0.0)  # fmt: skip
    for _ in range(10):
        fastest.estimates[0].record(32, 0.001)
        fastest.estimates[1].record(32, 0.05)
    x = secret(2, 4)
    ask(personal_local(fastest), "digits-large", level, x=x)
    return [x]


def split(world: World, **options: Any) -> SplitBackend:
    return SplitBackend(local(world), remote(world), world.profile, link=FAST, explore=0.0,
                        **options)  # fmt: skip


def split_features(world: World, level: str) -> list[np.ndarray]:
    x, mask = secret(2, 16), secret(2, 4)
    guard = Guard(split(world), rules={"personal": "features", "public": "any"})
    ask(guard, "gated", level, x=x, mask=mask)
    return [x, mask]


def split_probe(world: World, level: str) -> list[np.ndarray]:
    """A probe sends a whole sample: with the marks a Guard ``features`` rule sets."""
    x, mask = secret(2, 16), secret(2, 4)
    marks = {"features_only": level == "personal"}
    backend = split(world)
    try:
        backend.probe(
            InferRequest("gated", {"x": x, "mask": mask}, context=context(level, **marks))
        )
    except PrivacyError:
        pass
    finally:
        backend.close()
    return [x, mask]


class Always:
    """A trigger that fires on every chunk: the whole stream is one event."""

    threshold = 0.5
    chunk_s = 0.05  # four chunks: 0.2 s, above the segmenter's 0.1 s minimum

    def score(self, chunk: np.ndarray) -> float:
        return 1.0


def stream(world: World, level: str, inner: Backend, outbox: Outbox | None) -> list[np.ndarray]:
    chunks = secret(4, 64)
    events = Filter(Always(), inner=inner, model="events", outbox=outbox,
                    sensitivity=Sensitivity(level))  # fmt: skip
    events.feed_all(list(chunks))  # refused events are answered locally or queued
    return [chunks]


def filter_forwarding(world: World, level: str) -> list[np.ndarray]:
    tree = personal_local(prefer_remote(remote(world), local(world)))
    try:
        return stream(world, level, tree, None)
    finally:
        tree.close()


def outbox_drain(world: World, level: str) -> list[np.ndarray]:
    """An escalation the rules refused, deferred to the outbox, then drained."""
    outbox = Outbox(world.tmp / f"outbox-{next(SEEDS)}.db")
    sender = remote(world)
    x = secret(3, 4)

    def defer(escalation: InferRequest, *_: object) -> None:
        outbox.put(escalation, kind="escalation")

    tree = Cascade(local(world), remote(world), threshold=0.9, small_model="digits-small",
                   large_model="digits-large", on_escalation_failure=defer)  # fmt: skip
    ask(personal_local(tree), "digits-small", level, x=x)
    outbox.drain(sender.infer)
    sender.close()
    outbox.close()
    return [x]


def filter_outbox_drain(world: World, level: str) -> list[np.ndarray]:
    """Events refused on the way out, kept in the outbox, then drained."""
    outbox = Outbox(world.tmp / f"outbox-{next(SEEDS)}.db")
    sender, tree = remote(world), personal_local(remote(world))
    sent = stream(world, level, tree, outbox)
    outbox.drain(sender.infer)
    for closing in (sender, tree, outbox):
        closing.close()
    return sent


# -- the gateway with the README's deployments --------------------------------


def readme_deployments() -> list[dict[str, Any]]:
    """The README's deployment examples; a fragment (``root:`` only) takes the first's header."""
    text = (ROOT / "README.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]
    deployments = [b for b in blocks if isinstance(b, dict) and "root" in b]
    header = {k: v for k, v in deployments[0].items() if k != "root"}
    return [{**header, **d} for d in deployments]


DEPLOYMENTS = readme_deployments()


@dataclass
class Gateway:
    process: ServerProcess
    model: str
    inputs: Callable[[], dict[str, np.ndarray]]


_gateways: dict[int, Gateway] = {}
_gateway_lock = threading.Lock()


def gateway(world: World, index: int) -> Gateway:
    """``edgecloud edge`` on README deployment ``index``, its remote the recording front."""
    with _gateway_lock:
        if index in _gateways:
            return _gateways[index]
        spec = DEPLOYMENTS[index]
        text = yaml.safe_dump(spec).replace("resnet18-like", "gated")
        spec = yaml.safe_load(text)
        spec["repository"] = str(world.repo.root)
        spec["remotes"]["cloud"]["url"] = world.url
        spec["audit_log"] = str(world.tmp / f"audit-{index}.jsonl")
        if "outbox" in spec:
            spec["outbox"]["path"] = str(world.tmp / f"gateway-outbox-{index}.db")
        path = world.tmp / f"deployment-{index}.yaml"
        path.write_text(yaml.safe_dump(spec))
        port = free_port()
        argv = [sys.executable, "-m", "edgecloud.cli", "edge", "-d", str(path), "--port", str(port)]
        process = launch(argv, f"http://127.0.0.1:{port}", log=path.with_suffix(".log"))
        if "gated" in text:
            made = Gateway(process, "gated", lambda: {"x": secret(2, 16), "mask": secret(2, 4)})
        else:
            made = Gateway(process, "digits-small", lambda: {"x": secret(3, 4)})
        _gateways[index] = made
        return made


@pytest.fixture(scope="module", autouse=True)
def _stop_gateways() -> Iterator[None]:
    yield
    for made in _gateways.values():
        made.process.stop()
    _gateways.clear()


def through_gateway(index: int) -> Callable[[World, str], list[np.ndarray]]:
    def run(world: World, level: str) -> list[np.ndarray]:
        made = gateway(world, index)
        inputs = made.inputs()
        body = {
            "inputs": [
                {"name": k, "shape": list(v.shape), "datatype": "FP32", "data": v.ravel().tolist()}
                for k, v in inputs.items()
            ],
            "parameters": {"sensitivity": level},
        }
        reply = httpx.post(f"{made.process.url}/v2/models/{made.model}/infer", json=body,
                           timeout=30)  # fmt: skip
        assert reply.status_code == 200, reply.text
        return list(inputs.values())

    return run


# -- the matrix -----------------------------------------------------------------

Path_ = Callable[[World, str], list[np.ndarray]]

#: path name -> (how it sends, which sensitivities must arrive: True, never: False).
PATHS: dict[str, tuple[Path_, dict[str, bool | None]]] = {
    "direct": (direct, {"public": True, "personal": True, "restricted": False}),
    "guard-local": (guarded_direct, {"public": True, "personal": False, "restricted": False}),
    "prefer_remote": (fallback_prefer_remote, {"public": True, "personal": False,
                                               "restricted": False}),
    "prefer_local": (fallback_prefer_local, {"public": True, "personal": False,
                                             "restricted": False}),
    "cascade-escalation": (cascade(remote), {"public": True, "personal": False,
                                             "restricted": False}),
    "cascade-prefer_remote": (
        cascade(lambda w: prefer_remote(remote(w), local(w))),
        {"public": True, "personal": False, "restricted": False},
    ),
    "fastest-hedge": (hedged, {"public": True, "personal": False, "restricted": False}),
    "split-features": (split_features, {"public": True, "personal": False,
                                        "restricted": False}),
    "split-probe": (split_probe, {"public": True, "personal": False, "restricted": False}),
    "filter": (filter_forwarding, {"public": True, "personal": False, "restricted": False}),
    "outbox-drain": (outbox_drain, {"public": True, "personal": False, "restricted": False}),
    "filter-outbox-drain": (filter_outbox_drain, {"public": True, "personal": False,
                                                  "restricted": False}),
    **{
        f"gateway-readme-{i}": (through_gateway(i), {"public": True, "personal": False,
                                                     "restricted": False})
        for i in range(len(DEPLOYMENTS))
    },
}  # fmt: skip


def cases() -> Iterator[Any]:
    for name in PATHS:
        for level in LEVELS:
            yield pytest.param(name, level, id=f"{name}-{level}")


def test_the_readme_has_deployments_to_check() -> None:
    assert len(DEPLOYMENTS) >= 2
    kinds = {next(iter(d["root"])) for d in DEPLOYMENTS}
    assert kinds == {"guard"}


@pytest.mark.parametrize("path,level", list(cases()))
def test_nothing_that_may_not_leave_reaches_the_server(world: World, path: str, level: str) -> None:
    send, arrives = PATHS[path]
    start = world.mark()
    secrets = send(world, level)
    arrived = list(recorder.arrivals(world.record, start))
    seen = [any(recorder.contains(a, s) for a in arrived) for s in secrets]
    if arrives[level]:
        assert any(seen), f"{path}: {level} data never reached the server — path not exercised"
    else:
        leaked = [i for i, hit in enumerate(seen) if hit]
        assert not leaked, f"{path}: {level} input(s) {leaked} reached the server"
