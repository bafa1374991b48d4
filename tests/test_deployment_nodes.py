"""The typed deployment tree: one registered model per node kind, ``walk`` and
``Deployment.nodes`` by YAML path, the leaf hook, and YAML written back in the file's form."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgecloud
from edgecloud import InferRequest, LocalBackend, ModelRepository, RemoteBackend
from edgecloud.backends.base import Backend
from edgecloud.deployment import (
    KINDS,
    CascadeNode,
    DeploymentSpec,
    GuardNode,
    LocalNode,
    Node,
    PreferRemoteNode,
    RemoteNode,
    RemoteSpec,
    parse_node,
    walk,
)
from edgecloud.deployment.build import _Builder
from edgecloud.routing.cascade import Cascade
from edgecloud.routing.privacy import Guard
from edgecloud.server.launch import free_port
from edgecloud.tensors import InferResponse

from .models import make_repo

X = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
CASCADE = {
    "small": "local",
    "large": {"prefer_remote": {"remote": "cloud", "local": "local"}},
    "small_model": "affine",
    "large_model": "affine",
    "threshold": 0.5,
    "output": "z",
}
TREE = {"guard": {"rules": {"personal": "local"}, "inner": {"cascade": CASCADE}}}
PATHS = [
    "root.guard", "root.guard.inner.cascade", "root.guard.inner.cascade.small",
    "root.guard.inner.cascade.large.prefer_remote",
    "root.guard.inner.cascade.large.prefer_remote.remote",
    "root.guard.inner.cascade.large.prefer_remote.local",
]  # fmt: skip


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    return make_repo(tmp_path)


def spec(repo: ModelRepository, root: Any = TREE) -> dict[str, Any]:
    url = f"http://127.0.0.1:{free_port()}"
    return {"repository": str(repo.root), "remotes": {"cloud": {"url": url, "timeout_s": 0.5}},
            "root": root}  # fmt: skip


def test_walk_yields_every_node_by_its_yaml_path() -> None:
    walked = list(walk(parse_node(TREE)))
    assert [path for path, _ in walked] == PATHS
    kinds = [type(node) for _, node in walked]
    assert kinds == [GuardNode, CascadeNode, LocalNode, PreferRemoteNode, RemoteNode, LocalNode]
    written = [{"local": {"threads": 2}}, {"remote": "cloud"}, {"local": None}]
    fastest = parse_node({"fastest": {"paths": written}})
    assert [p for p, _ in walk(fastest, "x")] == [
        "x.fastest", "x.fastest.paths.0.local", "x.fastest.paths.1.remote",
        "x.fastest.paths.2.local",
    ]  # fmt: skip


def test_deployment_nodes_are_the_built_backends(repo: ModelRepository) -> None:
    with edgecloud.load(spec(repo)) as tree:
        assert list(tree.nodes) == [p for p, _ in walk(tree.spec)]
        assert set(tree.nodes) == set(PATHS)
        assert isinstance(tree.nodes["root.guard"], Guard) and tree.root is tree.nodes["root.guard"]
        assert isinstance(tree.nodes["root.guard.inner.cascade"], Cascade)
        small = tree.nodes["root.guard.inner.cascade.small"]
        assert isinstance(small, LocalBackend)
        remote = tree.nodes["root.guard.inner.cascade.large.prefer_remote.remote"]
        assert isinstance(remote, RemoteBackend) and remote is tree.remotes["cloud"]
        response = tree.infer(InferRequest("affine", {"x": X}))
    assert response.outputs["z"].shape == (5, 3)


class Tagged(Backend):
    """A leaf wrapper that records what passed through it (what the lead's hook does)."""

    seen: ClassVar[list[str]] = []

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name

    def infer(self, request: InferRequest) -> InferResponse:
        Tagged.seen.append(self.name)
        return self.inner.infer(request)


def test_the_leaf_hook_wraps_every_leaf_and_only_leaves(
    repo: ModelRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Builder, "_adapt", lambda self, backend: Tagged(backend))
    Tagged.seen = []
    with edgecloud.load(spec(repo)) as tree:
        wrapped = {p for p, b in tree.nodes.items() if isinstance(b, Tagged)}
        leaves = {p for p, node in walk(tree.spec) if node.leaf}
        tree.infer(InferRequest("affine", {"x": X}))
    assert wrapped == leaves == set(PATHS[2:3] + PATHS[4:])
    assert Tagged.seen and Tagged.seen[0].startswith("local")


def test_yaml_round_trips_in_the_files_form(repo: ModelRepository) -> None:
    paths = [
        {"local": {"threads": 2}},
        {"remote": "cloud"},
        {"guard": {"inner": {"cascade": CASCADE}}},
    ]
    raw = spec(repo, {"fastest": {"paths": paths}})
    typed = DeploymentSpec.model_validate(raw)
    assert typed.to_dict() == raw
    assert DeploymentSpec.model_validate(yaml.safe_load(typed.to_yaml())) == typed
    with edgecloud.load(yaml.safe_load(typed.to_yaml())) as tree:
        assert tree.infer(InferRequest("affine", {"x": X})).outputs["z"].shape == (5, 3)


def test_nodes_built_in_code_write_the_short_forms(repo: ModelRepository) -> None:
    root = GuardNode(
        rules={"personal": "local"},
        inner=CascadeNode(small=LocalNode(), large=RemoteNode(name="cloud"), threshold=0.5,
                          small_model="affine", large_model="affine", output="z"),
    )  # fmt: skip
    typed = DeploymentSpec(
        repository=str(repo.root),
        remotes={"cloud": RemoteSpec(url="http://127.0.0.1:9")},
        root=root,
    )
    assert typed.to_dict()["root"] == {"guard": {"rules": {"personal": "local"}, "inner": {
        "cascade": {"small": "local", "large": "cloud", "threshold": 0.5, "small_model": "affine",
                    "large_model": "affine", "output": "z"}}}}  # fmt: skip
    with edgecloud.load(typed) as tree:  # a typed spec loads as it is
        assert tree.spec is typed and "root.guard.inner.cascade.large" in tree.nodes


def test_every_kind_is_registered_once_and_named_in_errors(repo: ModelRepository) -> None:
    assert list(KINDS)[:2] == ["local", "remote"] and "filter" in KINDS
    assert all(issubclass(cls, Node) and cls.kind == kind for kind, cls in KINDS.items())
    assert len({cls for cls in KINDS.values()}) == len(KINDS)
    with pytest.raises(edgecloud.ConfigError) as info:
        edgecloud.load(spec(repo, {"guard": {"inner": {"teleport": {}}}}))
    assert info.value.message.endswith(
        f"root.guard.inner: unknown node 'teleport'; use one of {', '.join(KINDS)}"
    )


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ({"remote": ""}, "root.remote: String should have at least 1 character"),
        ({"guard": {"inner": "local"}, "cascade": CASCADE}, "root: a node is 'local'"),
        ({"cascade": CASCADE | {"small": {"local": {"threads": 0}}}},
         "root.cascade.small.local.threads: Input should be greater than or equal to 1"),
        ({"fastest": {"paths": ["local", {"local": {"device": "tpu"}}]}},
         "root.fastest.paths.1.local.device: Input should be 'auto', 'cpu' or 'cuda'"),
        ({"cascade": 3}, "root.cascade: Input should be a valid dictionary"),
        ({"local": "fast"}, "root.local: Input should be a valid dictionary"),
        ("moon", "root: unknown remote 'moon' (remotes: cloud)"),
        # no silent coercion: YAML's own types or an error
        ({"cascade": CASCADE | {"threshold": True}}, "root.cascade.threshold: Input should be a"),
        ({"cascade": CASCADE | {"threshold": "0.5"}}, "root.cascade.threshold: Input should be a"),
        ({"local": {"threads": 2.0}}, "root.local.threads: Input should be a valid integer"),
        ({"fastest": {"paths": ["local", "cloud"], "hedge": "yes"}},
         "root.fastest.hedge: Input should be a valid boolean"),
    ],
)  # fmt: skip
def test_errors_name_the_yaml_path(repo: ModelRepository, root: Any, message: str) -> None:
    with pytest.raises(edgecloud.ConfigError) as info:
        edgecloud.load(spec(repo, root))
    assert info.value.message.startswith(f"deployment: {message}"), info.value.message


def test_a_remote_cannot_be_called_local(repo: ModelRepository) -> None:
    raw = spec(repo, "local") | {"remotes": {"local": {"url": "http://127.0.0.1:9"}}}
    with pytest.raises(edgecloud.ConfigError, match="remotes: 'local' names the device"):
        edgecloud.load(raw)


NAMES = st.sampled_from(["cloud", "edge"])
LEAVES = st.one_of(
    st.just("local"),
    NAMES,
    st.integers(1, 4).map(lambda t: {"local": {"threads": t}}),
    NAMES.map(lambda n: {"remote": n}),
)


def _combinators(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    pairs = st.tuples(children, children)
    return st.one_of(
        pairs.map(lambda p: {"prefer_remote": {"remote": p[0], "local": p[1]}}),
        pairs.map(lambda p: {"prefer_local": {"local": p[0], "remote": p[1]}}),
        pairs.map(lambda p: {"fallback": {"primary": p[0], "secondary": p[1]}}),
        st.tuples(children, children, st.floats(0, 1)).map(
            lambda p: {"cascade": {"small": p[0], "large": p[1], "threshold": p[2]}}
        ),
        st.lists(children, min_size=2, max_size=3).map(lambda ps: {"fastest": {"paths": ps}}),
        children.map(lambda c: {"guard": {"inner": c, "rules": {"personal": "local"}}}),
        children.map(lambda c: {"filter": {"trigger": {"kind": "frame-diff"}, "inner": c}}),
    )


TREES = st.recursive(LEAVES, _combinators, max_leaves=8)


def _at(raw: Any, path: str) -> Any:
    """The value at a walk path in the raw YAML data (KeyError/IndexError: not a real path)."""
    for step in path.split(".")[1:]:
        raw = raw[int(step)] if isinstance(raw, list) else raw[step]
    return raw


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tree=TREES)
def test_any_tree_round_trips_walks_real_paths_and_builds(tree: Any, tmp_path: Path) -> None:
    from .test_deployment_schema import errors

    node = parse_node(tree)
    assert node.dump() == tree  # exactly as written
    remotes = {"cloud": {"url": "http://127.0.0.1:9"}, "edge": {"url": "grpc://127.0.0.1:9"}}
    outbox = {"path": str(tmp_path / "outbox.db")}
    raw = {"repository": str(tmp_path), "outbox": outbox, "remotes": remotes, "root": tree}
    walked = list(walk(DeploymentSpec.model_validate(raw)))
    for path, walked_node in walked:
        found = _at(tree, path)  # a node's path ends in its kind unless written short
        written = found if walked_node.is_short() else {walked_node.kind: found}
        assert parse_node(written).dump() == walked_node.dump()
    schema = DeploymentSpec.json_schema()
    assert errors(schema, raw, schema) == []
    with edgecloud.load(raw) as deployment:
        assert list(deployment.nodes) == [path for path, _ in walked]
