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

Rows added after the hostile review of the first fix: a Guard whose refusal
passes a Fastest or a Fallback before a cascade or filter defers it (the
refusal must not become "unavailable", nor the Guard's mark be lost), a
split whose head only reshapes a raw input, a caller's preset ``features``,
and a sensitivity given as a plain string. The tail request of a ``features``
split carries no caller parameters or id (its own test below).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
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

import edgecloud
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
from edgecloud.routing.privacy import AuditLog, Guard
from edgecloud.server.launch import ServerProcess, free_port, launch
from edgecloud.split import ALL_LOCAL, ALL_REMOTE, Link, SplitBackend, SplitProfile, split_model
from edgecloud.split.profile import default_profile_path
from edgecloud.tensors import RequestContext, Sensitivity

from ..conftest import ROOT
from ..models import event_sink_config, event_sink_onnx
from ..sample_data import add_with_samples
from ..server.conftest import Server, start_server
from ..split.test_backend import COPIES, copied_onnx, gated_onnx
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


def downmix_onnx(path: Path) -> Path:
    """score = relu(mean(audio, axis 1) W): audio FP32 [batch, 1, 16] → [batch, 4].

    The "downmix" of mono audio is the audio itself, element for element.
    """
    weights = np.random.default_rng(3).standard_normal((16, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["audio"], ["mono"], axes=[1], keepdims=0),
            helper.make_node("MatMul", ["mono", "w"], ["h"]),
            helper.make_node("Relu", ["h"], ["score"]),
        ],
        "downmix",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", 1, 16])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 4])],
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
    copied: SplitProfile
    """``copied``: the head reshapes the raw ``y`` for the tail, split at every cut."""
    single: SplitProfile
    """``single``: a one-input classifier split after its MatMul (a real feature crosses)."""
    downmix: SplitProfile
    """``downmix``: mono audio averaged over its one channel (the audio), split at every cut."""

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
    add_with_samples(repo, "gated", gated, max_batch_size=8)
    split = split_model(repo, "gated", codecs=("fp32",), cuts=["cut1"], repeats=1)
    times = {ALL_LOCAL: (0.2, 0.0), ALL_REMOTE: (0.0, 0.3), "cut1": (0.01, 0.01)}
    profile = dataclasses.replace(split.profile, candidates=[
        dataclasses.replace(c, head_s=times[c.name][0], tail_s=times[c.name][1])
        for c in split.profile.candidates
    ])  # fmt: skip
    profile.save(default_profile_path(repo, "gated"))
    path = tmp / "copied.onnx"
    copied_onnx(path, COPIES["reshape"])
    add_with_samples(repo, "copied", path, max_batch_size=8)
    copied = split_model(repo, "copied", codecs=("fp32",), repeats=1).profile
    path = classifier_onnx(tmp / "single.onnx", 7)
    add_with_samples(repo, "single", path, max_batch_size=8)
    single = split_model(repo, "single", codecs=("fp32",), repeats=1).profile
    path = downmix_onnx(tmp / "downmix.onnx")
    add_with_samples(repo, "downmix", path, max_batch_size=8)
    downmix = split_model(repo, "downmix", codecs=("fp32",), cuts=["cut0", "cut1"], repeats=1)
    server = start_server(repo, tmp)
    record, port = tmp / "arrivals.jsonl", free_port()
    argv = [sys.executable, recorder.__file__, "--port", str(port), "--upstream", server.url,
            "--record", str(record)]  # fmt: skip
    proxy = launch(argv, f"http://127.0.0.1:{port}", log=tmp / "proxy.log")
    yield World(repo, server, proxy, record, profile, tmp, copied, single, downmix.profile)
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


class Down(Backend):
    """A path that is unreachable (an UnavailableError), without touching any socket."""

    name = "down"

    def infer(self, request: InferRequest) -> Any:
        raise UnavailableError("down: the link is gone")

    def close(self) -> None:
        return None


def deployment_cascade_guard_fastest(world: World, level: str) -> list[np.ndarray]:
    """The reported case: a Guard inside a cascade's large branch, above a Fastest.

    Both Fastest paths refuse for privacy; the cascade defers the escalation to
    the outbox; then the outbox drains (``Deployment.drain_outbox``).
    """
    spec = {
        "repository": str(world.repo.root),
        "remotes": {"cloud": {"url": world.url, "timeout_s": 5.0},
                    "cloud2": {"url": world.url, "timeout_s": 5.0}},
        "outbox": {"path": str(world.tmp / f"deployment-outbox-{next(SEEDS)}.db")},
        "root": {"cascade": {
            "small": "local",
            "large": {"guard": {"rules": {"personal": "local"},
                                "inner": {"fastest": {"paths": ["cloud", "cloud2"]}}}},
            "small_model": "digits-small", "large_model": "digits-large",
            "threshold": 0.9, "defer_failed_escalations": True,
        }},
    }  # fmt: skip
    deployment = edgecloud.load(spec)
    x = secret(3, 4)
    try:
        deployment.infer(InferRequest("digits-small", {"x": x}, context=context(level)))
        deployment.drain_outbox()
    finally:
        deployment.close()
    return [x]


def deferred_then_drained(
    inner: Callable[[World], Backend], *, via: str
) -> Callable[[World, str], list[np.ndarray]]:
    """A cascade (``via="cascade"``) or filter (``"filter"``) over ``personal_local(inner)``
    that defers what fails to an outbox, as the deployment wires it; then the drain."""

    def run(world: World, level: str) -> list[np.ndarray]:
        outbox = Outbox(world.tmp / f"outbox-{next(SEEDS)}.db")
        tree = personal_local(inner(world))
        if via == "filter":
            sent = stream(world, level, tree, outbox)
        else:
            x = secret(3, 4)

            def defer(escalation: InferRequest, _: object, why: str) -> None:
                outbox.put(escalation, kind="escalation", why=why)

            cascaded = Cascade(local(world), tree, threshold=0.9, small_model="digits-small",
                               large_model="digits-large", on_escalation_failure=defer)  # fmt: skip
            ask(cascaded, "digits-small", level, x=x)
            sent = [x]
        sender = remote(world)
        outbox.drain(sender.infer)
        for closing in (sender, tree, outbox):
            closing.close()
        return sent

    return run


def two_remotes(world: World) -> Backend:
    return Fastest([remote(world), remote(world)], explore=0.0)


def remote_then_down(world: World) -> Backend:
    """Its primary refuses for privacy; its secondary is unreachable."""
    return Fallback(remote(world), Down(), name="remote-then-down")


def down_then_remote(world: World) -> Backend:
    return Fastest([Down(), remote(world)], explore=0.0)


def split_features_copy(world: World, level: str) -> list[np.ndarray]:
    """The head only reshapes the raw ``y``: under ``features`` no cut may send it."""
    x, y = secret(2, 8), secret(2, 4)
    for candidate in world.copied.candidates:
        if candidate.name in (ALL_LOCAL, ALL_REMOTE):
            continue
        backend = SplitBackend(local(world), remote(world), world.copied, fixed=candidate.key)
        ask(Guard(backend, rules={"personal": "features"}), "copied", level, x=x, y=y)
    return [x, y]


def split_features_downmix(world: World, level: str) -> list[np.ndarray]:
    """ReduceMean over the one channel of mono audio returns the audio: under ``features``
    its cut is raw (before: a feature, and the audio crossed), the MatMul's is not."""
    audio = secret(2, 1, 16)
    for candidate in world.downmix.candidates:
        if candidate.name in (ALL_LOCAL, ALL_REMOTE):
            continue
        backend = SplitBackend(local(world), remote(world), world.downmix, fixed=candidate.key)
        ask(Guard(backend, rules={"personal": "features"}), "downmix", level, audio=audio)
    return [audio]


def guard_features_preset(world: World, level: str) -> list[np.ndarray]:
    """The caller names its raw input a feature: a Guard ``features`` rule must not believe it."""
    x = secret(2, 4)
    guard = Guard(remote(world), rules={"personal": "features"})
    preset = dataclasses.replace(context(level), features=frozenset({"x"}))
    try:
        guard.infer(InferRequest("digits-large", {"x": x}, context=preset))
    except PrivacyError:
        pass
    finally:
        guard.close()
    return [x]


def plain_string(world: World, level: str) -> list[np.ndarray]:
    """``RequestContext(sensitivity="restricted")``: a plain string, as config-fed code passes."""
    x = secret(2, 4)
    plain = RequestContext(sensitivity=level)  # type: ignore[arg-type]
    with remote(world) as sender, contextlib.suppress(PrivacyError):
        sender.infer(InferRequest("digits-large", {"x": x}, context=plain))
    return [x]


def plain_string_outbox(world: World, level: str) -> list[np.ndarray]:
    """The same context queued in the outbox, then drained."""
    x = secret(2, 4)
    outbox = Outbox(world.tmp / f"outbox-{next(SEEDS)}.db")
    plain = RequestContext(sensitivity=level)  # type: ignore[arg-type]
    outbox.put(InferRequest("digits-large", {"x": x}, context=plain))
    with remote(world) as sender:
        outbox.drain(sender.infer)
    outbox.close()
    return [x]


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
    "deployment-cascade-guard-fastest-outbox": (
        deployment_cascade_guard_fastest, {"public": True, "personal": False, "restricted": False}
    ),
    "cascade-guard-fallback-outbox": (
        deferred_then_drained(remote_then_down, via="cascade"),
        {"public": True, "personal": False, "restricted": False},
    ),
    "filter-guard-fastest-outbox": (
        deferred_then_drained(two_remotes, via="filter"),
        {"public": True, "personal": False, "restricted": False},
    ),
    "filter-guard-fastest-down-outbox": (
        deferred_then_drained(down_then_remote, via="filter"),
        {"public": True, "personal": False, "restricted": False},
    ),
    "split-features-copy": (split_features_copy, {"public": True, "personal": False,
                                                  "restricted": False}),
    "split-features-downmix": (split_features_downmix, {"public": True, "personal": False,
                                                        "restricted": False}),
    "guard-features-preset": (guard_features_preset, {"public": True, "personal": False,
                                                      "restricted": False}),
    "plain-string-sensitivity": (plain_string, {"public": True, "personal": True,
                                                "restricted": False}),
    "plain-string-outbox": (plain_string_outbox, {"public": True, "personal": True,
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


def test_a_features_split_sends_no_caller_parameters_or_id(world: World) -> None:
    """The tail request under ``features`` carries the activation, not the caller's metadata.

    What still leaves: the transport's own parameters (sensitivity, key, binary
    flag). The answer keeps the caller's id; the audit log names what was dropped.
    """
    audit = world.tmp / f"audit-{next(SEEDS)}.jsonl"
    cut = next(c for c in world.single.candidates if c.name not in (ALL_LOCAL, ALL_REMOTE))
    start = world.mark()
    backend = SplitBackend(local(world), RemoteBackend(world.url, audit=AuditLog(audit)),
                           world.single, fixed=cut.key)  # fmt: skip
    guard = Guard(backend, rules={"personal": "features"})
    parameters: dict[str, Any] = {"patient_name": "Jane Doe", "diagnosis": "confidential"}
    request = InferRequest("single", {"x": secret(2, 4)}, id="patient-4711", parameters=parameters,
                           context=context("personal"))  # fmt: skip
    answer = guard.infer(request)
    guard.close()
    assert answer.trace.served_by.startswith(f"split:{cut.key}")  # the tail really was sent
    assert answer.id == "patient-4711"
    posts = [a for a in recorder.arrivals(world.record, start) if a.method == "POST"]
    assert posts
    for arrival in posts:
        for word in (b"Jane Doe", b"patient", b"diagnosis", b"confidential", b"4711"):
            assert word not in arrival.body, (arrival.path, word)
        assert set(arrival.parameters()) <= {"sensitivity", "idempotency_key", "binary_data_output"}
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert records and all(
        r["dropped"] == ["id", "parameters.diagnosis", "parameters.patient_name"] for r in records
    )
