"""Building a validated deployment spec into its backend tree, node by node."""

from __future__ import annotations

import os
from pathlib import Path

from ..backends.base import Backend
from ..backends.local import LocalBackend
from ..backends.remote import RemoteBackend
from ..errors import ConfigError
from ..repository import ModelRepository
from ..routing.outbox import Outbox
from ..routing.privacy import AuditLog
from ..routing.transforms import InputAdapter
from .nodes import Node
from .spec import DeploymentSpec

__all__ = ["_Builder"]


class _Builder:
    """The :class:`~.nodes.BuildContext` of one ``load``: shared clients, sessions, outbox."""

    def __init__(self, spec: DeploymentSpec, base: Path, where: str) -> None:
        self.spec = spec
        self.base = base
        self.where = where
        self.repository = ModelRepository(self.path(spec.repository))
        self.audit = AuditLog(self.path(spec.audit_log)) if spec.audit_log else None
        self.outbox = (
            Outbox(
                self.path(spec.outbox.path),
                max_items=spec.outbox.max_items,
                ttl_s=spec.outbox.ttl_s,
                full_policy=spec.outbox.full_policy,
                max_attempts=spec.outbox.max_attempts,
            )
            if spec.outbox
            else None
        )
        self._locals: dict[str, LocalBackend] = {}
        self._serving: list[str | None] = [None]
        """The model the node being built will be asked for (a cascade names them)."""
        self.local_models: dict[str, tuple[str, LocalBackend]] = {}
        self.remotes: dict[str, RemoteBackend] = {}
        self.nodes: dict[str, Backend] = {}
        """YAML path -> the built backend of the node there (leaves after ``_adapt``)."""
        self.served: set[str] = set()
        """Models the tree names for its leaves (a cascade's small/large, a split's model)."""
        self.pass_through: list[tuple[str, bool]] = []
        """Leaves that run whatever model a request names: (YAML path, is it a remote)."""

    def path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.base / path

    def error(self, at: str, message: str) -> ConfigError:
        return ConfigError(f"{self.where}: {at}: {message}")

    def node(self, node: Node, at: str) -> Backend:
        """Build ``node`` standing at ``at`` (its field's path); record it by its own path."""
        path = node.path(at)
        backend = node.build(self, path)
        if node.leaf:
            self._record_leaf(node, path)
            backend = self._adapt(backend)
        self.nodes[path] = backend
        return backend

    def _record_leaf(self, node: Node, path: str) -> None:
        model = self._serving[-1]
        named = {model} if model is not None else node.entry_models()
        if named:
            self.served |= named
        else:
            self.pass_through.append((path, node.kind != "local"))

    def check_models_section(self) -> None:
        """Every ``models:`` entry names a model some leaf runs, when the tree names them all.

        A tree whose every leaf has its model named (a cascade's ``small_model``/
        ``large_model``, a split's ``model``) runs only those: an entry for any
        other is a typo that would be ignored silently. A tree with a leaf that
        runs the request's model is checked against the repository by
        ``Deployment.check_ready`` instead.

        Raises:
            ConfigError: ``<file>: models.<name>: ...`` naming the models the tree runs.
        """
        if self.pass_through:
            return
        for name in self.spec.models:
            if name not in self.served:
                runs = ", ".join(sorted(self.served)) or "none"
                raise self.error(
                    f"models.{name}",
                    f"no node of the tree runs model {name!r} (it runs: {runs}); "
                    "fix the name or remove the entry",
                )

    def _adapt(self, backend: Backend) -> Backend:
        """Every leaf (local, remote, split): its requests' inputs derived per model
        (the file's ``models:`` section), when one is declared."""
        return InputAdapter(backend, self.spec.models) if self.spec.models else backend

    def node_for(self, model: str | None, node: Node, at: str) -> Backend:
        """Build ``node`` knowing the requests it gets ask for ``model`` (None: the caller's)."""
        self._serving.append(model or self._serving[-1])
        try:
            return self.node(node, at)
        finally:
            self._serving.pop()

    def local(
        self, at: str, *, threads: int | None = None, device: str = "cpu", model: str | None = None
    ) -> LocalBackend:
        key = f"{threads}/{device}"
        if key not in self._locals:  # one session cache per configuration
            self._locals[key] = LocalBackend(
                self.repository,
                intra_op_threads=threads,
                device=device,  # type: ignore[arg-type]  # checked by LocalNode's Literal
            )
        model = model or self._serving[-1]
        if model is not None:
            self.local_models.setdefault(model, (at, self._locals[key]))
        return self._locals[key]

    @property
    def uses_local(self) -> bool:
        return bool(self._locals)

    def remote(self, name: str, at: str) -> RemoteBackend:
        if name in self.remotes:
            return self.remotes[name]
        spec = self.spec.remotes.get(name)
        if spec is None:
            known = ", ".join(self.spec.remotes) or "none declared"
            raise self.error(at, f"unknown remote {name!r} (remotes: {known})")
        token = os.environ.get(spec.token_env) if spec.token_env else None
        if spec.token_env and token is None:
            raise self.error(f"remotes.{name}.token_env", f"${spec.token_env} is not set")
        remote = RemoteBackend(
            spec.url, token=token, timeout=spec.timeout_s, binary=spec.binary, audit=self.audit
        )
        self.remotes[name] = remote
        return remote
