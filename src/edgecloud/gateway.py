"""``edgecloud edge``: a hybrid deployment behind the Open Inference Protocol on localhost.

Apps in any language call the gateway exactly as they would call a v2 server;
the deployment (cascade, fallback, privacy guard, outbox) decides per request,
and every response carries its trace in the ``edgecloud_trace`` parameter.

Idempotency keys (``Idempotency-Key`` header or ``idempotency_key``
parameter) get the server's treatment here too, with the same store
(:mod:`edgecloud.server.idempotency`; by default a file in the state
directory named after the deployment file): a keyed request is answered
once — also when the deployment answered it on the device — a reuse with
another payload is a 422, and the key travels on to the remote, which binds
it the same way (a cascade's escalation carries a key derived from it:
:func:`edgecloud.routing.keys.derived_key`).

The gateway answers for exactly the model names its deployment can serve
(:func:`entry_models`): a cascade with ``small_model`` is asked by that name,
a split by its ``model``; a tree that passes the caller's name on to its
leaves serves the repository's models. Any other name is a 404 on every
endpoint (infer, metadata, ready, config) — never an answer computed by
another model under the requested name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backends.local import LocalBackend
from .deployment import Deployment, Node, load, parse_node
from .errors import ConfigError, DeadlineExceededError, EdgecloudError, ModelNotFoundError, clip
from .repository import ModelConfig
from .server.app import event_loop_factory, graceful_server, http_protocol, tune_gc
from .server.host import ModelState, model_states, open_idempotency

if TYPE_CHECKING:
    from .fleet.agent import UpdateAgent
    from .server.app import Listening
from .server.metrics import ServerMetrics
from .server.settings import ServerSettings
from .tensors import InferRequest, InferResponse

__all__ = ["DeploymentHost", "entry_models", "run_gateway"]

log = logging.getLogger("edgecloud.gateway")


class DeploymentHost:
    """Adapts a Deployment to the HTTP front end's host interface."""

    def __init__(self, deployment: Deployment, settings: ServerSettings) -> None:
        self.deployment = deployment
        self.settings = settings
        self.metrics = ServerMetrics()
        serving = deployment.source or deployment.repository.root
        self.idempotency = open_idempotency(settings, serving, self.metrics)
        self.agent: UpdateAgent | None = None
        """The fleet update agent (``updates:`` in the deployment file), or None."""
        self.names: frozenset[str] | None = None
        """Model names requests may carry; None: any (a remote-only pass-through tree)."""
        self.states: dict[str, ModelState] = {}
        self.refresh_states()

    def refresh_states(self) -> None:
        """Read which models are ready (at start, and after the update agent installs one)."""
        entry = entry_models(self.deployment.spec.root)
        names = entry
        states = gateway_states(self.deployment)
        if self.agent is not None:  # what the agent's swaps serve, not the version policy
            for name in states:
                published = self.agent.backend.published(name)
                if published is not None:
                    error = None if published else "no version is published"
                    states[name] = ModelState(name, sorted(published), bool(published), error)
        if entry is None and (states or self.deployment.uses_local):
            names = frozenset(states)
        self.names = names
        self.states = {
            name: state for name, state in states.items() if names is None or name in names
        }

    def after_update_round(self, outcomes: list[Any]) -> None:
        """The agent's ``on_round``: re-read the states when a round installed or rolled back."""
        if any(o.action in ("updated", "rolled-back") for o in outcomes):
            self.refresh_states()

    def check_name(self, model: str) -> None:
        """ModelNotFoundError (404) unless the deployment serves ``model``."""
        if self.names is not None and model not in self.names:
            served = ", ".join(sorted(self.names)) or "none"
            raise ModelNotFoundError(
                f"no model {clip(model)} behind this gateway (it serves: {served})"
            )

    def config(self, model: str) -> ModelConfig:
        self.check_name(model)
        if model not in self.states:
            known = ", ".join(self.states) or "none"
            raise ModelNotFoundError(
                f"no model {clip(model)} behind this gateway (models: {known})"
            )
        return self.deployment.repository.config(model)

    def ready(self, model: str, version: str | None = None) -> bool:
        """The server's answer (:meth:`ModelState.serves`): the version counts."""
        self.check_name(model)
        state = self.states.get(model)
        return state is not None and state.serves(version)

    async def infer(self, request: InferRequest) -> InferResponse:
        """The deployment's answer; a keyed request at most once (the key goes on
        to any remote the deployment sends it to)."""
        self.check_name(request.model)
        if request.context.idempotency_key and self.settings.idempotency_window_s > 0:
            return await self.idempotency.run(request, lambda: self._infer(request))
        return await self._infer(request)

    async def _infer(self, request: InferRequest) -> InferResponse:
        timeout = self.settings.request_timeout_s
        try:
            response = await asyncio.wait_for(self.deployment.infer_async(request), timeout)
        except TimeoutError:
            self._observe(request.model, False)
            raise DeadlineExceededError(f"no answer within the gateway's {timeout:g} s") from None
        except EdgecloudError as exc:
            self._observe(
                request.model, exc.status_code < 500
            )  # the caller's mistakes do not count
            raise
        self._observe(request.model, True)
        return response

    def _observe(self, model: str, ok: bool) -> None:
        """Count a request for the update agent's post-swap watch (a no-op without one)."""
        if self.agent is not None and self.agent.observe(model, ok):
            self.refresh_states()  # the watch swapped the previous version back

    async def drain_outbox_forever(self, every_s: float = 5.0) -> None:
        """Send what the outbox holds whenever the link allows (the re-sync loop)."""
        outbox = self.deployment.outbox
        if outbox is None or not self.deployment.remotes:
            return
        if outbox.quarantined is not None:
            log.error("outbox: a damaged file was set aside at %s at open", outbox.quarantined)
        while True:
            try:
                if len(outbox):
                    result = await asyncio.to_thread(self.deployment.drain_outbox)
                    if result is not None and (result.delivered or result.dead_lettered):
                        log.info(
                            "outbox: delivered %d, dead-lettered %d, %d left",
                            result.delivered,
                            result.dead_lettered,
                            result.remaining,
                        )
            except EdgecloudError as exc:  # e.g. the disk is full: keep the loop, try later
                log.error("outbox: %s", exc.message)
            await asyncio.sleep(every_s)


def gateway_states(deployment: Deployment) -> dict[str, ModelState]:
    """What the gateway reports ready: :func:`~edgecloud.server.host.model_states`,
    the server's computation, on the deployment's repository.

    Every model is opened once by a session-less check (warm-up off) that is
    then closed, so a model whose config does not match its graph is not
    ready here either (before: ready, then a 503 on every request).
    """
    checker = LocalBackend(deployment.repository, warmup=False, verify=False)  # status() did
    try:
        return model_states(deployment.repository, checker)
    finally:
        checker.close()


def entry_models(node: Node | Any) -> frozenset[str] | None:
    """The model names a request to the deployment node ``node`` (typed, or raw YAML) may carry.

    A cascade with ``small_model`` is asked by that name (its answers are that
    model's or its escalation's), a split by its ``model``; other combinators
    serve the union of what their children serve. None: the node passes the
    caller's name on (``local``, a remote), so the names are the leaves'.
    Each node kind answers for itself (:meth:`~edgecloud.deployment.Node.entry_models`).
    """
    return (node if isinstance(node, Node) else parse_node(node)).entry_models()


def check_ready(deployment: Deployment, host: DeploymentHost) -> None:
    """The gateway answers for the repository's models: at least one must be ready.

    ``load`` has already loaded every model the file names; this adds what
    the gateway itself serves (its model list and metadata come from the
    repository). A broken model among good ones is reported not ready
    (``/v2/models/{m}/ready`` 503), as on the server.

    Raises:
        ConfigError: the repository does not exist or no model in it can serve.
    """
    root = deployment.repository.root
    if not root.is_dir():
        raise ConfigError(f"{deployment.where}: repository: {root} does not exist")
    if not any(state.ready for state in host.states.values()):
        why = "; ".join(f"{s.name}: {s.error}" for s in host.states.values()) or "it is empty"
        raise ConfigError(f"{deployment.where}: repository: no model in {root} can serve ({why})")
    for state in host.states.values():
        if not state.ready:
            log.warning("model %s is not ready: %s", state.name, state.error)


def run_gateway(
    path: Path, settings: ServerSettings, on_ready: Callable[[Listening], None] | None = None
) -> None:
    """Serve the deployment at ``path`` on ``settings.host:settings.http_port`` until SIGTERM.

    The port is bound first (ConfigError naming it when it cannot be had);
    then start-up fails (ConfigError) unless every model the deployment names
    loads and matches its sha256 and the repository has a model to serve;
    ``on_ready`` is called once that holds, with the port bound (port 0
    resolved). Of the server settings the gateway uses the listener's (host,
    http_port, TLS), token, limits (max_request_bytes, request_timeout_s),
    access_log and shutdown_grace_s; how models run is the deployment file's business.
    """
    from .server.app import listen

    settings.check_tls()
    sock = listen(settings.host, settings.http_port, "the gateway's HTTP", "--port")
    try:
        _serve_gateway(path, settings, sock, on_ready)
    finally:
        sock.close()


def _start_agent(deployment: Deployment) -> UpdateAgent | None:
    """The deployment's update agent, its active versions served (None without ``updates:``).

    A managed model with no version on the device (a fresh device) is installed
    before the readiness check: the agent's first check runs now, again every
    :data:`FIRST_CHECK_RETRY_S` until it installs or ``updates.first_check_s``
    has passed (each try itself bounded by the agent's HTTP timeouts). What
    then serves is the readiness check's decision: with some model ready the
    gateway serves those (an update server that is down must not take the
    device's working models down with it — Mender's rule: keep running what
    works) and the agent keeps trying in the background; with none it exits
    (ConfigError) naming the fleet server's answer.
    """
    spec = deployment.spec.updates
    if spec is None:
        return None
    from .fleet.device import agent_for

    deployment.repository.root.mkdir(parents=True, exist_ok=True)  # the agent fills it
    agent = agent_for(deployment)
    if agent is None:
        return None
    try:
        served = agent.start()
        for model, version in served.items():
            log.info("fleet: %s serves version %s", model, version)
        missing = tuple(model for model, version in served.items() if version is None)
        if missing:
            _first_install(agent, missing, spec.first_check_s)
    except BaseException:
        agent.close()
        raise
    return agent


#: Seconds between first-install tries while a managed model has no version.
FIRST_CHECK_RETRY_S = 2.0


def _first_install(agent: UpdateAgent, missing: tuple[str, ...], wait_s: float) -> None:
    """Check ``missing`` models until each is installed or ``wait_s`` has passed."""
    import time

    names = ", ".join(missing)
    log.warning(
        "fleet: no version of %s on this device: installing from %s before serving "
        "(waiting up to %.0f s)", names, agent.settings.server, wait_s,
    )  # fmt: skip
    deadline = time.monotonic() + wait_s
    while True:
        outcomes = agent.check(missing)
        missing = tuple(o.model for o in outcomes if o.version is None)
        if not missing:
            return
        left = deadline - time.monotonic()
        if left <= 0:
            why = "; ".join(f"{o.model}: {o.detail or o.action}" for o in outcomes)
            agent.first_install_failed = why
            log.error(
                "fleet: %s still has no version after %.0f s (%s); serving the models "
                "this device has, the agent keeps trying", ", ".join(missing), wait_s, why,
            )  # fmt: skip
            return
        time.sleep(min(FIRST_CHECK_RETRY_S, left))


def _serve_gateway(
    path: Path,
    settings: ServerSettings,
    sock: socket.socket,
    on_ready: Callable[[Listening], None] | None,
) -> None:
    from ._optional import require
    from .server.app import Listening, bound_port
    from .server.http import HttpApp

    uvicorn = require("uvicorn", extra="server", feature="edgecloud edge")
    deployment = load(path)
    agent = None
    try:
        agent = _start_agent(deployment)  # a fresh device installs before the ready check
        deployment.check_ready()
        host = DeploymentHost(deployment, settings)
        check_ready(deployment, host)
    except ConfigError as exc:
        deployment.close()
        if agent is None:
            raise
        agent.close()
        if agent.first_install_failed is None:
            raise
        raise ConfigError(
            f"{exc.message}; the first update from {agent.settings.server} did not install: "
            f"{agent.first_install_failed}"
        ) from exc
    except BaseException:
        if agent is not None:
            agent.close()
        deployment.close()
        raise
    host.agent = agent
    host.refresh_states()  # the versions the agent published, not the version policy's
    if on_ready is not None:
        tls = settings.tls_cert is not None
        on_ready(Listening(settings.host, bound_port(sock), None, tls))
    app = HttpApp(host, token=settings.bearer_token(), expose_trace=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        lifespan="on",
        access_log=False,
        # the client is the socket's peer: X-Forwarded-For from a local process is
        # not trusted (and the middleware cost ~1 % of the loop per request)
        proxy_headers=False,
        log_level="warning",
        http=http_protocol(),
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
    )

    tune_gc(gen0=None)  # freeze only: the remote tier's client leaves cycles behind

    async def main() -> None:
        drainer = asyncio.create_task(host.drain_outbox_forever())
        stop = threading.Event()
        if host.agent is not None:
            updating = threading.Thread(
                target=host.agent.run,
                args=(stop, host.after_update_round),
                name="fleet-agent",
                daemon=True,
            )
            updating.start()
            signal.signal(signal.SIGUSR1, lambda *_: host.agent.wake() if host.agent else None)
        try:
            # the finally below runs on SIGTERM too (graceful_server: no re-raise)
            await graceful_server(uvicorn, config).serve(sockets=[sock])
        finally:
            stop.set()
            if host.agent is not None:
                host.agent.close()
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drainer
            await host.idempotency.close()
            deployment.close()

    # asyncio.run ignores uvicorn.Config(loop=...): pick uvloop here, as serve does.
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main())
