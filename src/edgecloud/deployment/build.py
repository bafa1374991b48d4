"""Building a validated deployment spec into its backend tree, node by node."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from ..backends.base import Backend
from ..backends.local import LocalBackend
from ..backends.remote import RemoteBackend
from ..errors import ConfigError
from ..repository import ModelRepository
from ..routing.outbox import DeadLetter, DrainResult, Outbox, OutboxItem
from ..routing.privacy import AuditLog
from ..routing.transforms import InputAdapter
from ..tensors import InferRequest
from .nodes import Node
from .spec import DeploymentSpec

__all__ = ["LazyOutbox", "_Builder"]


class LazyOutbox(Outbox):
    """The deployment's :class:`Outbox`, its file opened on first use, not by ``load``.

    Reading a deployment file (``edgecloud.load`` to inspect it, the advisor,
    calibrate) creates no queue files. The first ``put`` (a deferred
    escalation, a filter event), ``drain``, ``items``/``stats`` or :meth:`open`
    opens it, under a lock, exactly as :class:`Outbox` would have at start:
    same checks, quarantine and durability; ``load(ready=True)`` (what
    ``edgecloud edge`` does) opens it before the first request, so a damaged
    or unwritable file fails there. ``close`` of one never opened touches nothing.
    """

    def __init__(self, path: str | os.PathLike[str], **settings: Any) -> None:
        self._opening = threading.Lock()
        self._deferred = True
        super().__init__(path, **settings)  # its _open() is deferred (below)
        self._deferred = False

    def _open(self) -> sqlite3.Connection:
        if self._deferred:
            return None  # type: ignore[return-value]  # stored by the setter as "not open"
        return super()._open()

    @property
    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = self.__dict__.get("_lazy_db")
        if db is None:
            with self._opening:
                db = self.__dict__.get("_lazy_db")
                if db is None:
                    db = self._open()  # Outbox._open sets _db itself before its first write
                    self.__dict__["_lazy_db"] = db
        return db

    @_db.setter
    def _db(self, db: sqlite3.Connection | None) -> None:
        self.__dict__["_lazy_db"] = db

    @property
    def opened(self) -> bool:
        return self.__dict__.get("_lazy_db") is not None

    def open(self) -> None:
        """Open the file now (what the first use would do)."""
        _ = self._db

    def close(self) -> None:
        if self.opened:
            super().close()

    # Each public method opens the file before it takes the Outbox's own lock (opening
    # writes under that lock: opening from inside it would wait on itself).

    def __len__(self) -> int:
        if not self.opened and not self.path.exists():
            return 0  # nothing queued yet: counting creates no file (the gateway's drain loop)
        self.open()
        return super().__len__()

    def put(self, request: InferRequest, *, kind: str = "request", why: str | None = None) -> str:
        self.open()
        return super().put(request, kind=kind, why=why)

    def items(self) -> list[OutboxItem]:
        self.open()
        return super().items()

    def dead_letters(self) -> list[DeadLetter]:
        self.open()
        return super().dead_letters()

    def quarantines(self) -> list[tuple[float, str, str]]:
        self.open()
        return super().quarantines()

    def stats(self) -> dict[str, int]:
        self.open()
        return super().stats()

    def drain(self, *args: Any, **kwargs: Any) -> DrainResult:
        self.open()
        return super().drain(*args, **kwargs)


class _Builder:
    """The :class:`~.nodes.BuildContext` of one ``load``: shared clients, sessions, outbox."""

    def __init__(self, spec: DeploymentSpec, base: Path, where: str) -> None:
        self.spec = spec
        self.base = base
        self.where = where
        self.repository = ModelRepository(self.path(spec.repository))
        self.audit = AuditLog(self.file("audit_log", spec.audit_log)) if spec.audit_log else None
        self.outbox_used = False
        """Some node queues into the outbox (read :attr:`outbox` while building)."""
        self.queue: LazyOutbox | None = (
            LazyOutbox(
                self.file("outbox.path", spec.outbox.path),
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

    @property
    def outbox(self) -> Outbox | None:
        """The outbox, for a node that queues into it (a deferring cascade, a filter):
        reading it marks it used, so ``load(ready=True)`` opens its file before the
        first request; an outbox no node uses and no file holds is never created."""
        self.outbox_used = True
        return self.queue

    @outbox.setter
    def outbox(self, queue: Outbox | None) -> None:  # BuildContext declares it settable
        raise AttributeError("a deployment's outbox is fixed by its file")

    def open_queue_if_needed(self) -> None:
        """Open the outbox's file now if a node queues into it or it holds items to
        drain (it exists), so a damaged or unwritable file fails ``ready``."""
        if self.queue is not None and (self.outbox_used or self.queue.path.exists()):
            self.queue.open()

    def path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.base / path

    def file(self, at: str, value: str) -> Path:
        """:meth:`path` of a file the deployment writes; a directory there is refused."""
        path = self.path(value)
        if path.is_dir():
            raise self.error(at, f"{value!r} is a directory ({path}): name a file in it")
        return path

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
