"""Every strategy the advisor can recommend is a runnable deployment: its typed spec
loads with ``edgecloud.load`` and answers a request, against a real ``edgecloud serve``
hosting tiny models built here (a classifier split at a real cut, an event sink)."""

from __future__ import annotations

import itertools
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

import edgecloud
from edgecloud import InferRequest, ModelRepository
from edgecloud.advisor import advise, deployment_yaml, load_workload
from edgecloud.advisor.decide import Strategy
from edgecloud.advisor.deploy import ROOTS
from edgecloud.deployment import DeploymentSpec
from edgecloud.repository import config_from_onnx
from edgecloud.split import split_model

from ..models import event_sink_config, event_sink_onnx
from ..server.conftest import Server, start_server

X = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)


def classifier_onnx(path: Path, hidden: int | None, seed: int) -> Path:
    """probabilities = softmax(mlp(x)); x: FP32 [batch, 8] -> [batch, 4]."""
    rng = np.random.default_rng(seed)
    dims = [8, *([hidden] if hidden else []), 4]
    nodes, inits, last = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        inits.append(
            numpy_helper.from_array(rng.standard_normal((a, b)).astype(np.float32), f"w{i}")
        )
        nodes.append(helper.make_node("MatMul", [last, f"w{i}"], [f"h{i}"]))
        last = f"h{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [last], [f"r{i}"]))
            last = f"r{i}"
    nodes.append(helper.make_node("Softmax", [last], ["probabilities"], axis=-1))
    graph = helper.make_graph(
        nodes, "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 4])],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModelRepository, Server]]:
    """``large`` (split at a real cut, profile written), ``small``, ``events``; one server."""
    tmp = tmp_path_factory.mktemp("strategies")
    repo = ModelRepository(tmp / "model-repo")
    for name, hidden, seed in (("large", 16, 1), ("small", None, 2)):
        path = classifier_onnx(tmp / f"{name}.onnx", hidden, seed)
        repo.add_version(name, path, config=config_from_onnx(path, name, max_batch_size=16))
    repo.add_version("events", event_sink_onnx(tmp / "events.onnx"), config=event_sink_config())
    result = split_model(repo, "large", inputs={"x": X}, repeats=1)
    result.profile.save(repo.root / "large" / "split-profile.json")
    server = start_server(repo, tmp)
    yield repo, server
    server.stop()


def workload(url: str, model: str) -> dict[str, Any]:
    """Every pattern enabled: a small model, events in the stream, a cut to split at."""
    return {
        "name": "own-models", "remote_url": url,
        "application": {"latency_p50_ms": 50, "latency_p99_ms": 2000, "requests_per_s": 1,
                        "payload_kb": 0.1, "availability": 0.99},
        "model": {"name": model, "memory_mb": 1, "gflops": 0.0001, "accuracy": 0.95,
                  "small_name": "small", "small_memory_mb": 0.5, "small_gflops": 0.00001,
                  "small_accuracy": 0.9},
        "device": {"memory_mb": 100, "gflops_per_s": 1},
        "network": {"rtt_ms": 20, "uplink_mbps": 10, "availability": 0.99},
        "hybrid": {"event_fraction": 0.1, "split_cuts": [{"head_share": 0.5, "activation_kb": 0.1}],
                   "trigger": {"kind": "frame-diff", "threshold": 0.5, "chunk_s": 0.1}},
    }  # fmt: skip


def deployed(strategy: str, served: tuple[ModelRepository, Server], tmp: Path) -> Path:
    """The advisor's deployment.yaml for ``strategy``, written where its repository is."""
    repo, server = served
    model = "events" if strategy == "filter_then_forward" else "large"
    decision = advise(load_workload(workload(server.url, model)))
    text = deployment_yaml(decision, decision.candidate(strategy))
    spec = yaml.safe_load(text)
    spec["repository"] = str(repo.root)
    path = tmp / "deployment.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert DeploymentSpec.model_validate(spec).to_dict() == spec  # the YAML is the typed spec
    return path


def test_every_strategy_has_a_tree() -> None:
    assert set(ROOTS) == set(typing.get_args(Strategy))


@pytest.mark.network
@pytest.mark.parametrize("strategy", ["local", "remote", "prefer_remote", "cascade", "split"])
def test_the_strategy_answers_a_request(
    strategy: str, served: tuple[ModelRepository, Server], tmp_path: Path
) -> None:
    path = deployed(strategy, served, tmp_path)
    with edgecloud.load(path, ready=True) as tree:
        response = tree.infer(InferRequest("large", {"x": X}))
    probabilities = response.outputs["probabilities"]
    assert probabilities.shape == (3, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    served_by = response.trace.served_by
    expected = {"local": "local", "remote": "remote", "prefer_remote": "remote",
                "cascade": "local", "split": "split:"}[strategy]  # fmt: skip
    assert served_by.startswith(expected), served_by


@pytest.mark.network
def test_filter_then_forward_sends_the_events_to_the_server(
    served: tuple[ModelRepository, Server], tmp_path: Path
) -> None:
    from ..routing.conftest import metric

    _, server = served
    path = deployed("filter_then_forward", served, tmp_path)
    still, moving = np.zeros(32, np.float32), np.ones(32, np.float32)
    frames = [still] * 10 + [moving, still] * 3 + [still] * 20  # motion, then quiet
    before = metric(server, "edgecloud_requests_total", "events")
    with edgecloud.load(path) as tree:
        answers = [tree.infer(InferRequest("camera", {"input": f})) for f in frames]
    triggered = [bool(a.outputs["triggered"][0]) for a in answers]
    assert triggered[:10] == [False] * 10 and any(triggered[10:16])
    assert sum(int(a.outputs["events"][0]) for a in answers) == 1
    assert sum(int(a.outputs["queued"][0]) for a in answers) == 0
    assert metric(server, "edgecloud_requests_total", "events") == before + 1
    assert any(s.kind == "network" for a in answers for s in a.trace.spans)


@pytest.mark.network
def test_filter_then_forward_behind_the_edge_gateway(
    served: tuple[ModelRepository, Server], tmp_path: Path
) -> None:
    """A v2 client streams chunks to ``edgecloud edge``; the answers say what happened."""
    import tritonclient.http as triton

    from edgecloud.server.launch import free_port

    from ..routing.test_gateway import start_gateway

    port = free_port()
    gateway = start_gateway(deployed("filter_then_forward", served, tmp_path), port)
    try:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        answers = []
        for frame in [np.zeros(32, np.float32)] * 3 + [np.ones(32, np.float32)]:
            chunk = triton.InferInput("input", [32], "FP32")
            chunk.set_data_from_numpy(frame)
            answers.append(client.infer("events", [chunk]))
    finally:
        gateway.stop()
    assert [bool(a.as_numpy("triggered")[0]) for a in answers] == [False] * 3 + [True]
    assert answers[-1].as_numpy("events").dtype == np.int32
