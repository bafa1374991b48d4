"""The ``filter`` node: a stream screened on the device inside a deployment, one chunk per
request, completed events forwarded to its ``inner`` node (a real model here) or kept in
the deployment's outbox, with the strictest privacy context of their chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import edgecloud
from edgecloud import ConfigError, InferRequest, InvalidRequestError, ModelRepository
from edgecloud.deployment import FilterNode
from edgecloud.gateway import entry_models
from edgecloud.server.launch import free_port
from edgecloud.tensors import RequestContext, Sensitivity

from ..models import event_sink_config, event_sink_onnx

NORMAL, ANOMALY = np.zeros(4, np.float32), np.full(4, 10.0, np.float32)
#: quiet, three anomalous readings, then quiet long enough for the event to end
STREAM = [NORMAL] * 5 + [ANOMALY] * 3 + [NORMAL] * 6
TRIGGER = {"kind": "anomaly", "mean": [0.0] * 4, "std": [1.0] * 4, "threshold": 4.0, "alpha": 1.0}


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    repo = ModelRepository(tmp_path / "model-repo")
    repo.add_version("events", event_sink_onnx(tmp_path / "e.onnx"), config=event_sink_config())
    return repo


def deployment(tmp_path: Path, root: Any, **top: Any) -> Path:
    spec = {
        "repository": "model-repo",
        "remotes": {"cloud": {"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 0.5}},
        "audit_log": "audit.jsonl",
        "outbox": {"path": "outbox.db"},
        "root": root,
    } | top
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def feed(tree: edgecloud.Deployment, chunks: list[np.ndarray], **context: Any) -> list[Any]:
    return [
        tree.infer(InferRequest("sensor", {"reading": c}, context=RequestContext(**context)))
        for c in chunks
    ]


def test_events_reach_the_inner_model(repo: ModelRepository, tmp_path: Path) -> None:
    root = {"filter": {"trigger": TRIGGER, "inner": "local", "model": "events",
                       "event_input": "input"}}  # fmt: skip
    with edgecloud.load(deployment(tmp_path, root), ready=True) as tree:
        answers = feed(tree, STREAM)
        assert isinstance(tree.spec.root, FilterNode)
        assert entry_models(tree.spec.root) == {"events"}  # what `edgecloud edge` serves
        assert set(tree.nodes) == {"root.filter", "root.filter.inner"}
    triggered = [bool(a.outputs["triggered"][0]) for a in answers]
    assert triggered == [False] * 5 + [True] * 3 + [False] * 6
    events = [int(a.outputs["events"][0]) for a in answers]
    assert sum(events) == 1 and sum(int(a.outputs["queued"][0]) for a in answers) == 0
    done = answers[events.index(1)]
    assert done.trace.served_by == "filter"
    assert done.trace.spans[0].reason.startswith("filter:quiet")
    assert any(s.kind == "compute" and "events" in s.backend for s in done.trace.spans)
    assert {a.outputs["score"].dtype for a in answers} == {np.dtype(np.float32)}


def test_events_wait_in_the_outbox_while_the_link_is_down(
    repo: ModelRepository, tmp_path: Path
) -> None:
    root = {"filter": {"trigger": TRIGGER, "inner": "cloud", "model": "anomalies"}}
    with edgecloud.load(deployment(tmp_path, root)) as tree:
        answers = feed(tree, STREAM[:8])  # the stream ends inside the event
        assert sum(int(a.outputs["events"][0]) for a in answers) == 0
        assert tree.outbox is not None
        outbox = tree.outbox
        closed_early = outbox.items()
    assert closed_early == []
    from edgecloud.routing.outbox import Outbox

    reopened = Outbox(tmp_path / "outbox.db")
    try:
        (item,) = reopened.items()  # closing the deployment forwarded the open event
    finally:
        reopened.close()
    assert item.kind == "event" and item.model == "anomalies"


def test_events_keep_the_strictest_privacy_of_their_chunks(
    repo: ModelRepository, tmp_path: Path
) -> None:
    """A Guard above the filter keeps personal chunks local: their event is never sent."""
    inner = {"filter": {"trigger": TRIGGER, "inner": "cloud", "model": "anomalies"}}
    root = {"guard": {"rules": {"personal": "local"}, "inner": inner}}
    with edgecloud.load(deployment(tmp_path, root)) as tree:
        quiet = feed(tree, STREAM[:5])
        answers = feed(tree, STREAM[5:], sensitivity=Sensitivity.PERSONAL)
        assert tree.outbox is not None
        assert tree.outbox.items() == []
        (dead,) = tree.outbox.dead_letters()  # kept on record, never sent
    assert sum(int(a.outputs["queued"][0]) for a in quiet + answers) == 1
    assert dead.kind == "event" and dead.reason == "privacy"
    audit = tmp_path / "audit.jsonl"
    assert not audit.exists() or audit.read_text() == ""  # nothing left the device


@pytest.mark.parametrize(
    ("root", "top", "message"),
    [
        ({"filter": {"trigger": TRIGGER, "inner": "cloud"}}, {"outbox": None},
         "root.filter: declare an outbox"),
        ({"filter": {"trigger": {"kind": "anomaly", "fit": "normal.npy"}, "inner": "cloud"}}, {},
         "root.filter.trigger.fit: fit file"),
        ({"filter": {"trigger": {"kind": "anomaly"}, "inner": "cloud"}}, {},
         "root.filter.trigger: give either fit"),
        ({"filter": {"trigger": TRIGGER | {"std": [1.0, 0.0, 1.0, 1.0]}, "inner": "cloud"}}, {},
         "root.filter.trigger: std must be > 0"),
        ({"filter": {"trigger": TRIGGER | {"alpha": 0}, "inner": "cloud"}}, {},
         "root.filter.trigger.alpha: Input should be greater than 0"),
        ({"filter": {"trigger": {"kind": "frame-diff", "threshold": float("nan")},
                     "inner": "cloud"}},
         {}, "root.filter.trigger.threshold: Input should be a finite number"),
        ({"filter": {"trigger": {"kind": "sonar"}, "inner": "cloud"}}, {},
         "root.filter.trigger: Input tag 'sonar'"),
        ({"filter": {"trigger": TRIGGER, "inner": "moon"}}, {},
         "root.filter.inner: unknown remote 'moon'"),
        ({"filter": {"trigger": TRIGGER}}, {}, "root.filter.inner: Field required"),
        ({"filter": {"trigger": TRIGGER, "inner": "cloud", "segment": {"merge_gap_s": -1}}},
         {}, "root.filter.segment.merge_gap_s: Input should be greater than or equal to 0"),
    ],
)  # fmt: skip
def test_mistakes_name_their_yaml_path(
    repo: ModelRepository, tmp_path: Path, root: Any, top: dict[str, Any], message: str
) -> None:
    path = deployment(tmp_path, root, **top)
    with pytest.raises(ConfigError) as info:
        edgecloud.load(path)
    assert info.value.message.startswith(f"{path}: {message}"), info.value.message


def test_an_anomaly_trigger_fits_on_a_file(repo: ModelRepository, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "normal.npy", rng.standard_normal((200, 4)).astype(np.float32))
    trigger = {"kind": "anomaly", "fit": "normal.npy"}  # relative to the deployment file
    root = {
        "filter": {"trigger": trigger, "inner": "local", "model": "events", "event_input": "input"}
    }
    with edgecloud.load(deployment(tmp_path, root)) as tree:
        answers = feed(tree, [NORMAL, ANOMALY])
    assert [bool(a.outputs["triggered"][0]) for a in answers] == [False, True]
    np.save(tmp_path / "normal.npy", np.zeros((1, 4)))
    with pytest.raises(ConfigError, match=r"root.filter.trigger.fit: .*\[N >= 2, channels\]"):
        edgecloud.load(deployment(tmp_path, root))


def test_bad_requests_are_invalid_and_change_nothing(repo: ModelRepository, tmp_path: Path) -> None:
    root = {"filter": {"trigger": TRIGGER, "inner": "local", "model": "events"}}
    with edgecloud.load(deployment(tmp_path, root)) as tree:
        two = InferRequest("sensor", {"a": NORMAL, "b": NORMAL})
        with pytest.raises(InvalidRequestError, match=r"one chunk in one input.*\['a', 'b'\]"):
            tree.infer(two)
        feed(tree, [NORMAL])
        with pytest.raises(InvalidRequestError, match="every chunk must have shape"):
            feed(tree, [np.zeros(5, np.float32)])
        with pytest.raises(InvalidRequestError, match="empty chunk"):
            feed(tree, [np.zeros(0, np.float32)])
        (answer,) = feed(tree, [NORMAL])
    assert not answer.outputs["triggered"][0]


def test_a_named_chunk_input(repo: ModelRepository, tmp_path: Path) -> None:
    root = {"filter": {"trigger": TRIGGER, "inner": "local", "model": "events", "input": "b",
                       "event_input": "input"}}  # fmt: skip
    with edgecloud.load(deployment(tmp_path, root)) as tree:
        answer = tree.infer(InferRequest("sensor", {"a": NORMAL, "b": ANOMALY}))
        with pytest.raises(InvalidRequestError, match="reads its chunk from input 'b'"):
            tree.infer(InferRequest("sensor", {"a": NORMAL}))
    assert answer.outputs["triggered"][0]
