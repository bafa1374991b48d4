"""Deployments: a whole backend tree declared in YAML and built with ``edgecloud.load``.

::

    repository: model-repo            # models for local leaves
    remotes:
      cloud: {url: "http://127.0.0.1:8000", timeout_s: 2.0, token_env: EDGECLOUD_TOKEN}
    audit_log: audit.jsonl            # every tensor sent to a remote is recorded
    outbox: {path: outbox.db, max_items: 10000, full_policy: drop_oldest}
    root:
      guard:
        rules: {personal: local}
        inner:
          cascade:
            small: local
            large: {prefer_remote: {remote: cloud, local: local}}
            small_model: digits-small
            large_model: digits-large
            threshold: 0.72

A node is ``local``, the name of a remote, or a one-key mapping ``{kind:
params}`` naming one of the registered kinds (:data:`KINDS`: one pydantic model
per kind with its ``build()``, see :mod:`.nodes` and :mod:`.kinds`;
``edgecloud schema deployment`` prints them all as JSON Schema; it refuses what
validation refuses — column indices, slices, resize sides, ``mode`` without
``resize``, remote URL schemes — except what a schema cannot state: a slice
whose stop is not above its start, a slice index above 2^31 - 1, and a node
naming a remote the file does not declare; ``load`` refuses those). Mistakes are a
ConfigError naming the file and the YAML path
(``root.guard.inner.cascade.threshold: ...``). Relative paths are relative to
the deployment file.

The tree is typed: ``Deployment.spec.root`` is a :class:`Node`,
:func:`walk` yields ``(yaml_path, node)`` for every node,
``Deployment.nodes`` maps each YAML path to the backend built there, and
``DeploymentSpec.to_yaml()`` writes a spec back in the file's form (what the
advisor does).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from .._config_files import read_mapping
from ..backends.base import Backend
from ..backends.local import LocalBackend
from ..backends.remote import RemoteBackend
from ..errors import ConfigError, EdgecloudError
from ..repository import SAMPLES_FILE, ModelRepository
from ..routing.confidence import not_probabilities
from ..routing.outbox import DrainResult, Outbox
from ..routing.resilience import Backoff
from ..routing.transforms import InputAdapter, check_against
from ..samples import data_for, row_batches
from ..tensors import InferRequest, InferResponse
from .build import _Builder
from .filter_node import FilterNode
from .kinds import (
    BreakerSpec,
    CascadeNode,
    FallbackNode,
    FastestNode,
    GuardNode,
    LinkSpec,
    LocalNode,
    PreferLocalNode,
    PreferRemoteNode,
    RemoteNode,
    SplitNode,
)
from .nodes import KINDS, AnyNode, Node, node_kind, parse_node, walk
from .spec import DeploymentSpec, OutboxSpec, RemoteSpec

#: Sample rows ``check_ready`` runs through a local cascade model to check its output.
PROBE_ROWS = 8

#: The name calibration used for the cascade's parameters before node kinds were typed.
CascadeSpec = CascadeNode

__all__ = [
    "KINDS",
    "AnyNode",
    "BreakerSpec",
    "CascadeNode",
    "Deployment",
    "DeploymentSpec",
    "FallbackNode",
    "FastestNode",
    "FilterNode",
    "GuardNode",
    "LinkSpec",
    "LocalNode",
    "Node",
    "OutboxSpec",
    "PreferLocalNode",
    "PreferRemoteNode",
    "RemoteNode",
    "RemoteSpec",
    "SplitNode",
    "load",
    "node_kind",
    "parse_node",
    "walk",
]


class Deployment(Backend):
    """A built deployment: its root backend plus the resources it owns."""

    def __init__(
        self,
        root: Backend,
        spec: DeploymentSpec,
        *,
        repository: ModelRepository,
        remotes: dict[str, RemoteBackend],
        outbox: Outbox | None,
        source: Path | None,
    ) -> None:
        self.root = root
        self.spec = spec
        self.repository = repository
        self.remotes = remotes
        """The remotes the tree uses, by name (one client each, shared by every node)."""
        self.outbox = outbox
        self.source = source
        self.name = f"deployment:{source.name if source else 'inline'}"
        self.local_models: dict[str, tuple[str, LocalBackend]] = {}
        """Models the file names for a local node: model -> (YAML path, the node)."""
        self.uses_local = False
        """Whether any node runs models on this device (then the repository must exist)."""
        self.nodes: dict[str, Backend] = {}
        """YAML path (``root.guard.inner.cascade``) -> the built backend of that node."""
        self.served: set[str] = set()
        """Models the tree names for its leaves (cascade small/large, split model)."""
        self.pass_through: list[tuple[str, bool]] = []
        """Leaves running the request's model: (YAML path, whether it is a remote)."""

    @property
    def where(self) -> str:
        return str(self.source) if self.source else "deployment"

    def check_ready(self) -> None:
        """Load every model the file names for a local node, its files checked by sha256.

        Ready means every model this deployment will run on the device loads
        now: a repository that does not exist, a named model that is not in it,
        or one whose files are missing or corrupt fails here, not on the first
        request.

        Raises:
            ConfigError: ``<file>: <YAML path>: <what is missing>``, one line.
        """
        root = self.repository.root
        if self.uses_local and not root.is_dir():
            raise ConfigError(f"{self.where}: repository: {root} does not exist")
        names = self.repository.model_names()
        self._check_models_section(names)
        for model, (at, local) in self.local_models.items():
            if model not in names:
                raise ConfigError(
                    f"{self.where}: {at}: model {model!r} is not in {root} "
                    f"(models: {', '.join(names) or 'none'})"
                )
            try:
                local.load(model)
            except EdgecloudError as exc:
                raise ConfigError(f"{self.where}: {at}: {exc.message}") from exc
        pairs = [
            (node.small_model, node.large_model)
            for _, node in walk(self.spec)
            if isinstance(node, CascadeNode)
        ]
        check_against(self.spec.models, self.repository, pairs=pairs, where=self.where)
        for at, node in walk(self.spec):
            if isinstance(node, CascadeNode):
                self._check_cascade_output(at, node)

    def _check_models_section(self, names: list[str]) -> None:
        """A ``models:`` entry of a tree with pass-through local leaves names a model of the
        repository or of the tree (``load`` checked trees that name all their models).

        With a pass-through remote leaf, a model the server holds may be requested:
        its entries cannot be checked here (the server knows its models).
        """
        if not self.pass_through or any(remote for _, remote in self.pass_through):
            return
        known = set(names) | self.served
        for name in self.spec.models:
            if name not in known:
                raise ConfigError(
                    f"{self.where}: models.{name}: model {name!r} is not in "
                    f"{self.repository.root} (models: {', '.join(sorted(known)) or 'none'}); "
                    "fix the name or remove the entry"
                )

    def _check_cascade_output(self, at: str, node: CascadeNode) -> None:
        """A local cascade's ``output`` is class probabilities, before the first request.

        For each of ``small_model``/``large_model`` run on this device: its
        config must declare ``output`` as a float tensor, and when its version
        carries samples (``samples.npz``), its answer on the first
        :data:`PROBE_ROWS` rows (an unbatched model's: its whole sample request,
        :func:`~..samples.row_batches`) must be one distribution per row (what the
        cascade checks on every request, :func:`~..routing.confidence.not_probabilities`).
        A logits output passes the config check and is caught only by the
        samples; without them the cascade refuses it on the first request.
        """
        for key in ("small_model", "large_model"):
            model = getattr(node, key)
            if model is None or model not in self.local_models:
                continue
            _, local = self.local_models[model]
            version = self.repository.get(model)
            outputs = {spec.name: spec for spec in version.config.outputs}
            spec = outputs.get(node.output)
            fix = "set output: to the model's softmax output"
            if spec is None:
                raise ConfigError(
                    f"{self.where}: {at}.output: model {model!r} has no output {node.output!r} "
                    f"(outputs: {', '.join(outputs)}); {fix}"
                )
            if spec.datatype not in ("FP16", "FP32", "FP64"):
                raise ConfigError(
                    f"{self.where}: {at}.output: model {model!r}'s output {node.output!r} is "
                    f"{spec.datatype}, not float probabilities; {fix}"
                )
            if SAMPLES_FILE not in version.files:
                continue
            try:
                samples = data_for(version)
                # an unbatched model's samples are one request, whole (a state or a
                # scalar input has no rows to slice)
                rows = row_batches(samples, version.config, PROBE_ROWS, limit=1)[0]
                probs = local.infer(InferRequest(model, rows)).outputs[node.output]
            except EdgecloudError as exc:
                raise ConfigError(
                    f"{self.where}: {at}.{key}: model {model!r} cannot run its own samples: "
                    f"{exc.message}"
                ) from exc
            problem = not_probabilities(np.asarray(probs)) if probs.ndim == 2 else ""
            if problem:
                raise ConfigError(
                    f"{self.where}: {at}.output: model {model!r}'s output {node.output!r} is "
                    f"not class probabilities on its samples ({problem}); the cascade's "
                    f"{node.confidence} would route on noise: {fix}, or add a Softmax to it"
                )

    def infer(self, request: InferRequest) -> InferResponse:
        return self.root.infer(request)

    async def infer_async(self, request: InferRequest) -> InferResponse:
        return await self.root.infer_async(request)

    def drain_outbox(self, backoff: Backoff | None = None) -> DrainResult | None:
        """Send what the outbox holds to the first remote the tree uses.

        The same client as the tree's (token, TLS, audit log included); None
        when there is no outbox or no remote.
        """
        if self.outbox is None or not self.remotes:
            return None
        remote = next(iter(self.remotes.values()))
        # queued items are requests as the tree got them: derive each model's inputs on send
        return self.outbox.drain(InputAdapter(remote, self.spec.models).infer, backoff=backoff)

    def close(self) -> None:
        self.root.close()
        if self.outbox is not None:
            self.outbox.close()


def load(
    source: str | os.PathLike[str] | dict[str, Any] | DeploymentSpec, *, ready: bool = False
) -> Deployment:
    """Build the backend tree of a deployment file (or a parsed mapping, or a typed spec).

    Models are loaded lazily, so a file can be checked where its models are
    not (``edgecloud advise`` output, say). ``ready=True`` (what ``edgecloud
    edge`` does) also runs :meth:`Deployment.check_ready` before returning:
    every model the file names for a local node is loaded now, its files
    checked by sha256, and a missing one is a ConfigError naming its YAML path.
    """
    path = None if isinstance(source, dict | DeploymentSpec) else Path(source)
    where = str(path) if path else "deployment"
    if isinstance(source, DeploymentSpec):
        spec = source
    else:
        raw = source if isinstance(source, dict) else _read(Path(source))
        spec = _validate(DeploymentSpec, raw, "", where)
    base = path.parent if path else Path.cwd()
    builder = _Builder(spec, base, where)
    try:
        root = builder.node(spec.root, "root")
        builder.check_models_section()
    except BaseException:
        if builder.queue is not None:
            builder.queue.close()
        raise
    deployment = Deployment(
        root,
        spec,
        repository=builder.repository,
        remotes=builder.remotes,
        outbox=builder.queue,
        source=path,
    )
    deployment.local_models = builder.local_models
    deployment.uses_local = builder.uses_local
    deployment.served = builder.served
    deployment.pass_through = builder.pass_through
    deployment.nodes = {p: builder.nodes[p] for p, _ in walk(spec) if p in builder.nodes}
    if ready:
        try:
            deployment.check_ready()
            builder.open_queue_if_needed()  # serving: the queue's file is checked before use
        except EdgecloudError:
            deployment.close()
            raise
    return deployment


def _read(path: Path) -> dict[str, Any]:
    return read_mapping(path, "deployment", "at least 'root'")


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], raw: Any, at: str, where: str) -> M:
    """``model`` validated from ``raw``; the first error as ``where: yaml.path: message``.

    The path is the YAML's: pydantic's location also names the union member a
    value was tried as (``trigger.anomaly.alpha`` for ``trigger: {kind: anomaly,
    alpha: 2}``, ``root.remote.name`` for ``root: ""``); those steps are not keys
    of the file and are dropped.
    """
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join((*([at] if at else []), *_yaml_loc(raw, first["loc"])))
        message = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}: {loc or 'top level'}: {message}") from exc


def _has(raw: Any, step: int | str) -> bool:
    if isinstance(raw, list):
        return isinstance(step, int) and 0 <= step < len(raw)
    return isinstance(raw, dict) and step in raw


def _yaml_loc(raw: Any, loc: tuple[int | str, ...]) -> list[str]:
    path: list[str] = []
    for i, step in enumerate(loc):
        if _has(raw, step):
            raw = raw[step]
        elif not (isinstance(raw, dict) and raw.get("kind") != step and i == len(loc) - 1):
            continue  # the union member a value was tried as (a short form, a trigger's kind)
        path.append(str(step))  # a key of the file (or the missing one the error names)
    return path
