"""SplitBackend against a real server that hosts the tails as ordinary models."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

import edgecloud
from edgecloud import (
    InferRequest,
    LocalBackend,
    ModelNotFoundError,
    ModelRepository,
    PrivacyError,
    RemoteBackend,
    UnavailableError,
)
from edgecloud.routing import Fallback
from edgecloud.routing.privacy import AuditLog, Guard
from edgecloud.server.launch import free_port
from edgecloud.split import (
    ALL_LOCAL,
    ALL_REMOTE,
    Link,
    LinkTracker,
    RemoteTailTimer,
    SplitBackend,
    SplitProfile,
    split_model,
)
from edgecloud.tensors import RequestContext, Sensitivity

from ..sample_data import add_with_samples
from ..server.conftest import Server, start_server

X = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float32)
FAST = Link(rtt_s=0.0, bandwidth_bps=10e9)
THIN = Link(rtt_s=0.5, bandwidth_bps=1e3)


@pytest.fixture
def served(branched_repo: ModelRepository, tmp_path: Path) -> Iterator[tuple[SplitProfile, Server]]:
    """cut3 (fp32 and int8) written, then a server started on the repository."""
    result = split_model(branched_repo, "branched", codecs=("fp32", "int8"), cuts=["cut3"])
    result.profile.save(branched_repo.root / "branched" / "split-profile.json")
    (tmp_path / "server").mkdir()
    server = start_server(branched_repo, tmp_path / "server")
    yield result.profile, server
    server.stop()


def slow_device(profile: SplitProfile) -> SplitProfile:
    """Times as on a slow device and a fast server: 200 ms here, 2 ms there, cut3 in between."""
    times = {ALL_LOCAL: (0.2, 0.0), ALL_REMOTE: (0.0, 0.002), "cut3": (0.15, 0.001)}
    candidates = [
        dataclasses.replace(c, head_s=times[c.name][0], tail_s=times[c.name][1])
        for c in profile.candidates
    ]
    return dataclasses.replace(profile, candidates=candidates)


def backend(repo: ModelRepository, url: str, profile: SplitProfile, audit: AuditLog | None = None,
            **options: object) -> SplitBackend:  # fmt: skip
    return SplitBackend(LocalBackend(repo, intra_op_threads=1), RemoteBackend(url, audit=audit),
                        profile, explore=0.0, **options)  # type: ignore[arg-type]  # fmt: skip


def full_model(repo: ModelRepository) -> np.ndarray:
    with LocalBackend(repo) as local:
        return local.infer(InferRequest("branched", {"x": X})).outputs["y"]


def test_tails_are_ordinary_models_on_the_server(served: tuple[SplitProfile, Server]) -> None:
    _, server = served
    with RemoteBackend(server.url) as remote:
        meta = remote.metadata("branched.tail.cut3.int8")
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
        "s": "UINT8", "s__scale": "FP32", "s__offset": "FP32"
    }  # fmt: skip


@pytest.mark.parametrize("fixed,tolerance", [("cut3", 1e-5), ("cut3/int8", 0.05)])
def test_head_here_tail_there_equals_the_full_model(
    served: tuple[SplitProfile, Server], branched_repo: ModelRepository, tmp_path: Path,
    fixed: str, tolerance: float,
) -> None:  # fmt: skip
    profile, server = served
    audit = AuditLog(tmp_path / "audit.jsonl")
    with backend(branched_repo, server.url, profile, audit, fixed=fixed) as split:
        response = split.infer(InferRequest("branched", {"x": X}))
    want = full_model(branched_repo)
    assert np.abs(response.outputs["y"] - want).max() <= tolerance * np.abs(want).max()
    assert response.model == "branched" and response.trace.served_by == f"split:{fixed}"
    kinds = [s.kind for s in response.trace.spans]
    assert kinds[:3] == ["decision", "compute", "network"]
    sent = {r["tensor"] for r in audit}
    assert sent == ({"s"} if fixed == "cut3" else {"s", "s__scale", "s__offset"})


def test_the_planner_follows_the_link(
    served: tuple[SplitProfile, Server], branched_repo: ModelRepository, tmp_path: Path
) -> None:
    profile, server = served
    audit = AuditLog(tmp_path / "audit.jsonl")
    with backend(branched_repo, server.url, slow_device(profile), audit, link=THIN) as split:
        assert split.infer(InferRequest("branched", {"x": X})).trace.served_by == "split:all-local"
        assert list(audit) == []
        split.tracker = LinkTracker(FAST)  # the link got fast
        response = split.infer(InferRequest("branched", {"x": X}))
    assert response.trace.served_by == "split:all-remote"
    assert {r["tensor"] for r in audit} == {"x"}
    np.testing.assert_allclose(response.outputs["y"], full_model(branched_repo), rtol=1e-5)


def test_features_rule_sends_the_activation_never_the_input(
    served: tuple[SplitProfile, Server], branched_repo: ModelRepository, tmp_path: Path
) -> None:
    profile, server = served
    audit = AuditLog(tmp_path / "audit.jsonl")
    split = backend(branched_repo, server.url, slow_device(profile), audit, link=FAST)
    guard = Guard(split, rules={"personal": "features", "public": "any"})
    personal = RequestContext(sensitivity=Sensitivity.PERSONAL)
    response = guard.infer(InferRequest("branched", {"x": X}, context=personal))
    assert response.trace.served_by.startswith("split:cut3")  # all-remote would send x
    assert "x" not in {r["tensor"] for r in audit}
    public = guard.infer(InferRequest("branched", {"x": X}))
    assert public.trace.served_by == "split:all-remote"
    restricted = RequestContext(sensitivity=Sensitivity.RESTRICTED)
    before = len(list(audit))
    kept = guard.infer(InferRequest("branched", {"x": X}, context=restricted))
    assert kept.trace.served_by == "split:all-local" and len(list(audit)) == before
    guard.close()


def test_tail_times_measured_through_the_server(
    served: tuple[SplitProfile, Server], branched_repo: ModelRepository
) -> None:
    _, server = served
    with RemoteBackend(server.url) as remote:
        result = split_model(branched_repo, "branched", codecs=("fp32", "int8"), cuts=["cut3"],
                             tail_timer=RemoteTailTimer(remote, repeats=3))  # fmt: skip
    assert server.url in result.profile.tail_source
    assert {c.key for c in result.profile.candidates} >= {"cut3", "cut3/int8", ALL_REMOTE}
    assert all(c.tail_s >= 0 for c in result.profile.candidates)


def test_a_dead_server_is_an_error_a_fallback_answers(
    branched_repo: ModelRepository,
) -> None:
    result = split_model(branched_repo, "branched", cuts=["cut3"])
    dead = f"http://127.0.0.1:{free_port()}"
    split = backend(branched_repo, dead, result.profile, link=FAST, fixed="cut3")
    with pytest.raises(UnavailableError, match="unreachable"):
        split.infer(InferRequest("branched", {"x": X}))
    with pytest.raises(ModelNotFoundError, match="serves 'branched', not 'other'"):
        split.infer(InferRequest("other", {"x": X}))
    with pytest.raises(ModelNotFoundError, match="profile is for 'branched' version 1, not 7"):
        split.infer(InferRequest("branched", {"x": X}, version="7"))
    kept = Fallback(split, LocalBackend(branched_repo)).infer(InferRequest("branched", {"x": X}))
    np.testing.assert_allclose(kept.outputs["y"], full_model(branched_repo), rtol=1e-5)


def test_a_deployment_file_builds_a_split(
    served: tuple[SplitProfile, Server], branched_repo: ModelRepository, tmp_path: Path
) -> None:
    _, server = served
    spec = {
        "repository": str(branched_repo.root),
        "remotes": {"cloud": {"url": server.url}},
        "root": {"guard": {"rules": {"personal": "features"}, "inner": {
            "split": {"model": "branched", "remote": "cloud", "fixed": "cut3/int8"}}}},
    }  # fmt: skip
    (tmp_path / "deploy.yaml").write_text(yaml.safe_dump(spec))
    with edgecloud.load(tmp_path / "deploy.yaml") as deployment:
        response = deployment.infer(InferRequest("branched", {"x": X}))
    assert response.trace.served_by == "split:cut3/int8"
    spec["root"] = {"split": {"model": "branched", "remote": "cloud", "fixed": "cut9"}}
    with pytest.raises(edgecloud.ConfigError, match="no split 'cut9'.*candidates: all-local"):
        edgecloud.load(spec)


def test_link_tracker_learns_bandwidth_from_transfers() -> None:
    tracker = LinkTracker(Link(rtt_s=0.02, bandwidth_bps=1e6))
    for _ in range(8):
        tracker.record_rtt(0.020)
        tracker.record_transfer(1_000_000, 0.020 + 0.080)  # 1 MB in 80 ms: 100 Mbit/s
    link = tracker.link()
    assert link.rtt_s == pytest.approx(0.020)
    assert link.bandwidth_bps == pytest.approx(100e6)
    tracker.record_transfer(100, 5.0)  # too small to measure bandwidth: ignored
    assert tracker.link().bandwidth_bps == pytest.approx(100e6)


def test_exploration_tries_the_link_while_the_plan_is_all_local(
    served: tuple[SplitProfile, Server], branched_repo: ModelRepository
) -> None:
    profile, server = served
    device, remote = LocalBackend(branched_repo), RemoteBackend(server.url)
    always = SplitBackend(device, remote, slow_device(profile), link=THIN, explore=1.0)
    response = always.infer(InferRequest("branched", {"x": X}))
    assert response.trace.served_by == "split:all-remote"  # here the best that uses the link
    assert "exploring" in response.trace.spans[0].reason
    never = SplitBackend(device, remote, slow_device(profile), link=THIN, explore=0.0)
    assert never.infer(InferRequest("branched", {"x": X})).trace.served_by == "split:all-local"
    always.close()


def test_a_tail_the_server_lacks_is_planned_out(
    branched_repo: ModelRepository, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    result = split_model(branched_repo, "branched", codecs=("fp32", "int8"), cuts=["cut3"])
    shutil.rmtree(branched_repo.root / "branched.tail.cut3.int8")  # never deployed there
    times = {ALL_LOCAL: (0.2, 0.0), ALL_REMOTE: (0.0, 0.3), "cut3": (0.01, 0.01)}
    profile = dataclasses.replace(result.profile, candidates=[
        dataclasses.replace(c, head_s=times[c.name][0], tail_s=times[c.name][1])
        for c in result.profile.candidates
    ])  # fmt: skip
    assert profile.planner().plan(FAST).key == "cut3/int8"  # fewest bytes: the first choice
    (tmp_path / "server").mkdir()
    server = start_server(branched_repo, tmp_path / "server")
    try:
        with backend(branched_repo, server.url, profile, link=FAST) as split:
            response = split.infer(InferRequest("branched", {"x": X}))
            assert response.trace.served_by == "split:cut3"
            assert "cut3/int8" not in {p.key for p in split.planner.profiles}
    finally:
        server.stop()
    np.testing.assert_allclose(response.outputs["y"], full_model(branched_repo), rtol=1e-5)
    assert "branched.tail.cut3.int8" in caplog.text and "no longer planned" in caplog.text


def gated_onnx(path: Path) -> Path:
    """y = (relu(x W1) W2) * mask: the second input ``mask`` is read only by the last node.

    x: FP32 [batch, 16], mask: FP32 [batch, 4] → y: FP32 [batch, 4]. Every cut
    carries the raw ``mask`` to the tail (and fewer bytes than the inputs).
    """
    rng = np.random.default_rng(1)
    w1, w2 = rng.standard_normal((16, 4)), rng.standard_normal((4, 4))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
            helper.make_node("Relu", ["h1"], ["a"], name="relu"),
            helper.make_node("MatMul", ["a", "w2"], ["b"], name="mm2"),
            helper.make_node("Mul", ["b", "mask"], ["y"], name="gate"),
        ],
        "gated",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[
            numpy_helper.from_array(w1.astype(np.float32), "w1"),
            numpy_helper.from_array(w2.astype(np.float32), "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


GATED = {
    "x": np.random.default_rng(7).standard_normal((2, 16)).astype(np.float32),
    "mask": np.random.default_rng(8).standard_normal((2, 4)).astype(np.float32),
}


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[ModelRepository, SplitProfile, Server]]:
    """``gated`` split at cut1 (fp32, int8), times that make the cut the plan, and a server."""
    repo = ModelRepository(tmp_path / "repo")
    path = gated_onnx(tmp_path / "gated.onnx")
    add_with_samples(repo, "gated", path, max_batch_size=8)
    result = split_model(repo, "gated", codecs=("fp32", "int8"), cuts=["cut1"], repeats=1)
    times = {ALL_LOCAL: (0.2, 0.0), ALL_REMOTE: (0.0, 0.3), "cut1": (0.01, 0.01)}
    profile = dataclasses.replace(result.profile, candidates=[
        dataclasses.replace(c, head_s=times[c.name][0], tail_s=times[c.name][1])
        for c in result.profile.candidates
    ])  # fmt: skip
    assert profile.tensors["cut1"] == ["mask", "a"]
    (tmp_path / "server").mkdir()
    server = start_server(repo, tmp_path / "server")
    yield repo, profile, server
    server.stop()


@pytest.mark.parametrize("fixed", [None, "cut1", "cut1/int8"])
def test_features_rule_rules_out_a_cut_whose_tail_reads_a_raw_input(
    gated: tuple[ModelRepository, SplitProfile, Server], tmp_path: Path, fixed: str | None
) -> None:
    repo, profile, server = gated
    audit = AuditLog(tmp_path / "audit.jsonl")
    split = backend(repo, server.url, profile, audit, link=FAST, fixed=fixed)
    guard = Guard(split, rules={"personal": "features", "public": "any"})
    public = guard.infer(InferRequest("gated", GATED))
    assert public.trace.served_by.startswith("split:cut1")  # mask crosses: public data may
    assert {r["tensor"] for r in audit} >= {"mask"}
    before = len(list(audit))
    personal = RequestContext(sensitivity=Sensitivity.PERSONAL)
    kept = guard.infer(InferRequest("gated", GATED, context=personal))
    assert kept.trace.served_by == "split:all-local"  # every cut would send the raw mask
    assert len(list(audit)) == before
    reason = next(s.reason for s in kept.trace.spans if s.backend == split.name)
    assert "raw" in reason
    with LocalBackend(repo) as local:
        want = local.infer(InferRequest("gated", GATED)).outputs["y"]
    np.testing.assert_allclose(kept.outputs["y"], want, rtol=1e-5)
    guard.close()


def test_the_transport_refuses_a_raw_input_not_declared_a_feature(
    gated: tuple[ModelRepository, SplitProfile, Server], tmp_path: Path
) -> None:
    """The backstop: a tail request that smuggles a raw input never leaves."""
    _, _, server = gated
    audit = AuditLog(tmp_path / "audit.jsonl")
    tail = {"a": np.ones((2, 4), np.float32), "mask": GATED["mask"]}
    context = RequestContext(
        sensitivity=Sensitivity.PERSONAL, features_only=True, features=frozenset({"a"})
    )
    with RemoteBackend(server.url, audit=audit) as remote:
        with pytest.raises(PrivacyError, match="'mask' is raw input"):
            remote.infer(InferRequest("gated.tail.cut1", tail, version="1", context=context))
        declared = dataclasses.replace(context, features=frozenset({"a", "mask"}))
        answer = remote.infer(InferRequest("gated.tail.cut1", tail, version="1", context=declared))
    assert answer.outputs["y"].shape == (2, 4)
    assert [r["tensor"] for r in audit] == ["a", "mask"]  # only the declared request left


def test_a_profile_that_does_not_say_what_crosses_keeps_features_data_local(
    branched_repo: ModelRepository,
) -> None:
    """An older profile without the cut's tensors: planning must not guess they are features."""
    result = split_model(branched_repo, "branched", cuts=["cut3"], repeats=1)
    profile = dataclasses.replace(slow_device(result.profile), tensors={})
    split = SplitBackend(LocalBackend(branched_repo), RemoteBackend("http://127.0.0.1:9"),
                         profile, link=FAST, explore=0.0)  # fmt: skip
    features = RequestContext(sensitivity=Sensitivity.PERSONAL, features_only=True)
    assert split.choose(InferRequest("branched", {"x": X}, context=features))[0].name == ALL_LOCAL
    assert split.choose(InferRequest("branched", {"x": X}))[0].name != ALL_LOCAL
    split.close()


# -- a copy of a raw input is raw input (issue 14, kind 3: A2) -----------------


def copied_onnx(path: Path | None, copy: list[Any], *, name: str = "copied") -> Any:
    """out = relu(x W1) W2 + c, where the head computes c from the raw ``y`` by ``copy``.

    x: FP32 [batch, 8], y: FP32 [batch, 4] → out: FP32 [batch, 4]. ``copy`` is a
    list of nodes from ``y`` to ``c`` (FP32 [batch, 4]), placed first so every
    cut after them carries ``c`` to the tail. Saved to ``path`` when given.
    """
    rng = np.random.default_rng(2)
    constants = {
        "w1": rng.standard_normal((8, 4)), "w2": rng.standard_normal((4, 4)),
        "wy": rng.standard_normal((4, 4)), "two": np.array(2.0), "shape": np.array([-1, 4]),
        "axes": np.array([1]), "perm_shape": np.array([4, -1]), "idx": np.array([3, 2, 1, 0]),
        "starts": np.array([0]), "ends": np.array([4]), "reps": np.array([1, 1]),
        "full": np.array([1, 4]), "axes2": np.array([2]),
        "perm": 2 * np.eye(4)[[2, 0, 3, 1]], "eye": np.eye(4), "k1": np.full((1, 1, 1), 3.0),
    }  # fmt: skip
    initializers = [
        numpy_helper.from_array(v.astype(np.int64 if v.dtype.kind == "i" else np.float32), k)
        for k, v in constants.items()
    ]
    graph = helper.make_graph(
        [
            *copy,
            helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
            helper.make_node("Relu", ["h1"], ["a"], name="relu"),
            helper.make_node("MatMul", ["a", "w2"], ["b"], name="mm2"),
            helper.make_node("Add", ["b", "c"], ["out"], name="add"),
        ],
        name,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if path is not None:
        onnx.save(model, path)
    return model


def node(op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> Any:
    return helper.make_node(op, inputs, outputs, **attrs)


#: Steps that keep the information of ``y`` (a copy in another layout or scale):
#: the crossing ``c`` is raw data.
COPIES = {
    "identity": [node("Identity", ["y"], ["c"])],
    "reshape": [node("Reshape", ["y", "shape"], ["c"])],
    "flatten": [node("Flatten", ["y"], ["c"])],
    "unsqueeze-squeeze": [node("Unsqueeze", ["y", "axes"], ["u"]),
                          node("Squeeze", ["u", "axes"], ["c"])],
    "transpose-twice": [node("Transpose", ["y"], ["t"], perm=[1, 0]),
                        node("Transpose", ["t"], ["c"], perm=[1, 0])],
    "cast-wider-and-back": [node("Cast", ["y"], ["d"], to=TensorProto.DOUBLE),
                            node("Cast", ["d"], ["c"], to=TensorProto.FLOAT)],
    "gather-permutes": [node("Gather", ["y", "idx"], ["c"], axis=1)],
    "slice": [node("Slice", ["y", "starts", "ends", "axes"], ["c"])],
    "expand": [node("Expand", ["y", "full"], ["c"])],
    "tile": [node("Tile", ["y", "reps"], ["c"])],
    "neg": [node("Neg", ["y"], ["c"])],
    "mul-by-constant": [node("Mul", ["y", "two"], ["c"])],
    "div-add-sub": [node("Div", ["y", "two"], ["d"]), node("Add", ["d", "two"], ["e"]),
                    node("Sub", ["e", "two"], ["c"])],
    "relu": [node("Relu", ["y"], ["c"])],
    "sigmoid": [node("Sigmoid", ["y"], ["c"])],
    "concat-split": [node("Concat", ["y", "y"], ["cc"], axis=1),
                     node("Split", ["cc"], ["c", "c2"], axis=1, num_outputs=2)],
    "unknown-op": [node("Softsign", ["y"], ["c"])],
    # "feature" ops that do not mix: each output element is one input element (issue 14)
    "reduce-mean-over-a-size-1-axis": [node("Unsqueeze", ["y", "axes"], ["u"]),
                                       node("ReduceMean", ["u"], ["c"], axes=[1], keepdims=0)],
    "reduce-sum-axes-input-size-1": [node("Unsqueeze", ["y", "axes"], ["u"]),
                                     node("ReduceSum", ["u", "axes"], ["c"], keepdims=0)],
    "reduce-sum-noop-empty-axes": [node("ReduceSum", ["y"], ["c"], noop_with_empty_axes=1)],
    "max-pool-kernel-1": [node("Unsqueeze", ["y", "axes"], ["u"]),
                          node("MaxPool", ["u"], ["p"], kernel_shape=[1]),
                          node("Squeeze", ["p", "axes"], ["c"])],
    "average-pool-padded-border": [node("Unsqueeze", ["y", "axes"], ["u"]),
                                   node("AveragePool", ["u"], ["p"], kernel_shape=[2],
                                        pads=[1, 0]),
                                   node("Squeeze", ["p", "axes"], ["c"])],
    "global-pool-over-one": [node("Unsqueeze", ["y", "axes2"], ["u"]),
                             node("GlobalMaxPool", ["u"], ["p"]),
                             node("Squeeze", ["p", "axes2"], ["c"])],
    "conv-1x1-one-channel": [node("Unsqueeze", ["y", "axes"], ["u"]),
                             node("Conv", ["u", "k1"], ["p"]),
                             node("Squeeze", ["p", "axes"], ["c"])],
    "matmul-scaled-permutation": [node("MatMul", ["y", "perm"], ["c"])],
    "gemm-identity-transb": [node("Gemm", ["y", "eye"], ["c"], transB=1)],
    "matmul-weight-not-constant": [node("Mul", ["y", "two"], ["w"]),
                                   node("ReduceSum", ["w"], ["s"], keepdims=1),
                                   node("Mul", ["wy", "s"], ["ws"]),
                                   node("MatMul", ["y", "ws"], ["c"])],
}  # fmt: skip
#: Steps that mix elements through weights: the crossing ``c`` is a feature.
FEATURES = {
    "matmul": [node("MatMul", ["y", "wy"], ["c"])],
    "gemm-then-reshape": [node("Gemm", ["y", "wy"], ["g"]), node("Reshape", ["g", "shape"], ["c"])],
    "reduce-mean-over-4": [node("ReduceMean", ["y"], ["c"], axes=[1], keepdims=1)],
    "reduce-sum-over-all": [node("ReduceSum", ["y"], ["c"], keepdims=1)],
    "max-pool-kernel-4": [node("Unsqueeze", ["y", "axes"], ["u"]),
                          node("MaxPool", ["u"], ["p"], kernel_shape=[4]),
                          node("Squeeze", ["p", "axes"], ["c"])],
}  # fmt: skip


@pytest.mark.parametrize("steps", list(COPIES.values()), ids=list(COPIES))
def test_a_tensor_the_head_only_copies_from_a_raw_input_is_raw(steps: list[Any]) -> None:
    from edgecloud.split.partition import cut_points

    cuts = [c for c in cut_points(copied_onnx(None, steps)) if "c" in c.tensors]
    assert cuts
    for cut in cuts:
        assert "c" in cut.raw_inputs_of_tail, (cut.name, cut.tensors)


@pytest.mark.parametrize("steps", list(FEATURES.values()), ids=list(FEATURES))
def test_a_tensor_computed_through_weights_is_a_feature(steps: list[Any]) -> None:
    from edgecloud.split.partition import cut_points

    cuts = [c for c in cut_points(copied_onnx(None, steps)) if "c" in c.tensors]
    assert cuts
    for cut in cuts:
        assert "c" not in cut.raw_inputs_of_tail, (cut.name, cut.tensors)
        assert "y" not in cut.tensors


@pytest.fixture(scope="module")
def copied(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ModelRepository, SplitProfile, Server]]:
    """``copied`` with ``c = Reshape(y)`` (the reported model), split at every cut, served."""
    tmp = tmp_path_factory.mktemp("copied")
    repo = ModelRepository(tmp / "repo")
    path = tmp / "copied.onnx"
    copied_onnx(path, COPIES["reshape"])
    add_with_samples(repo, "copied", path, max_batch_size=8)
    result = split_model(repo, "copied", codecs=("fp32",), repeats=1)
    (tmp / "server").mkdir()
    server = start_server(repo, tmp / "server")
    yield repo, result.profile, server
    server.stop()


def test_features_rule_never_sends_a_reshaped_raw_input(
    copied: tuple[ModelRepository, SplitProfile, Server], tmp_path: Path
) -> None:
    """The reported case: under ``features`` no cut sends y's bytes in another shape."""
    repo, profile, server = copied
    cuts = [c.key for c in profile.candidates if c.name not in (ALL_LOCAL, ALL_REMOTE)]
    assert cuts and all(profile.raw_inputs_of_tail[k.split("/")[0]] for k in cuts)
    rng = np.random.default_rng(9)
    inputs = {"x": rng.random((1, 8), np.float32), "y": rng.random((1, 4), np.float32)}
    audit = AuditLog(tmp_path / "audit.jsonl")
    personal = RequestContext(sensitivity=Sensitivity.PERSONAL)
    for key in cuts:
        split = backend(repo, server.url, profile, audit, link=FAST, fixed=key)
        guard = Guard(split, rules={"personal": "features"})
        public = guard.infer(InferRequest("copied", inputs))
        assert public.trace.served_by.startswith(f"split:{key}")  # the cut itself works
        answer = guard.infer(InferRequest("copied", inputs, context=personal))
        assert answer.trace.served_by == "split:all-local", key
        np.testing.assert_allclose(answer.outputs["out"], public.outputs["out"], rtol=1e-5)
        guard.close()
    assert {r["sensitivity"] for r in audit} == {"public"}
