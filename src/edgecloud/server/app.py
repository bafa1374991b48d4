"""Running the server: HTTP (uvicorn) and gRPC on one event loop, graceful on SIGTERM.

Every listener binds exclusively: no ``SO_REUSEPORT`` (gRPC sets it by
default, which lets a second server share the port and answer part of the
calls, a token-less one included), and a port another process holds is one
ConfigError naming the port and the flag that moves it. With ``--workers N``
the workers of one server share the ports with ``SO_REUSEPORT`` among
themselves, after the supervisor's exclusive probe (:mod:`.workers`).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._optional import require
from ..errors import ConfigError
from ..repository import ModelRepository
from .cores import CoreSeat
from .host import ModelHost, ModelState
from .http import OFFLOAD_BYTES, HttpApp
from .launch import address
from .settings import ServerSettings

__all__ = [
    "Listening",
    "SharedListeners",
    "address",
    "bound_port",
    "check_ready",
    "graceful_server",
    "listen",
    "serve",
    "tune_gc",
]

log = logging.getLogger("edgecloud.server")


def bound_port(sock: socket.socket) -> int:
    """The port a bound socket holds (what port 0 turned into)."""
    return int(sock.getsockname()[1])


@dataclass(frozen=True)
class SharedListeners:
    """What a worker process of a multi-process server gets from its supervisor."""

    http_socket: socket.socket
    """The worker's listening HTTP socket (``SO_REUSEPORT``, beside the other workers')."""
    make_app: Callable[[ModelHost, str | None], HttpApp]
    """Builds the HTTP front end from the host and the bearer token."""
    control_dir: Path | None = None
    """The run's private model-control directory (:mod:`.model_control`)."""
    worker: int = 0
    """This worker's index (0 .. N-1)."""
    seat: CoreSeat | None = None
    """This worker's place in the cores the workers share (:mod:`.cores`)."""


@dataclass(frozen=True)
class Listening:
    """Where a started server answers: the ports actually bound (port 0 resolved)."""

    host: str
    http_port: int
    grpc_port: int | None = None
    tls: bool = False

    @property
    def url(self) -> str:
        """The HTTP base URL, e.g. ``http://[::1]:8000``."""
        return f"{'https' if self.tls else 'http'}://{address(self.host, self.http_port)}"

    @property
    def grpc(self) -> str | None:
        """The gRPC target (``[::1]:8001``), or None when gRPC is off."""
        return None if self.grpc_port is None else address(self.host, self.grpc_port)


def serve(
    repository: ModelRepository,
    settings: ServerSettings,
    on_ready: Callable[[Listening], None] | None = None,
    *,
    shared: SharedListeners | None = None,
) -> None:
    """Serve every model in ``repository`` until SIGINT/SIGTERM.

    The ports are bound first (ConfigError naming the port when one cannot
    be had), then every model is loaded (files checked by sha256); start-up
    fails with ConfigError if nothing can be served (:func:`check_ready`),
    and ``on_ready`` is called once something can and both listeners are
    bound, with the ports they hold (port 0 resolved to the one bound).

    ``shared``: this process is one worker of several (:mod:`.workers`): it
    serves HTTP on the socket given (bound with ``SO_REUSEPORT``), binds gRPC with
    ``SO_REUSEPORT`` beside the other workers, and its HTTP front end is the
    one ``shared.make_app`` builds.
    """
    uvicorn = require("uvicorn", extra="server", feature="edgecloud serve")
    token = settings.bearer_token()
    settings.check_tls()
    if shared is not None:
        http_socket = shared.http_socket
    else:
        http_socket = listen(settings.host, settings.http_port, "HTTP", "--http-port")
        if settings.grpc_port:  # probe: the clear error before grpc's own bind
            listen(settings.host, settings.grpc_port, "gRPC", "--grpc-port").close()
    try:
        if shared is not None:
            host = ModelHost(
                repository,
                settings,
                control_dir=shared.control_dir,
                worker=shared.worker,
                seat=shared.seat,
            )
        else:
            host = ModelHost(repository, settings)
        states = host.load_all()
        if settings.model_control != "explicit":  # explicit may start with nothing loaded
            check_ready(repository, states)
    except BaseException:
        http_socket.close()
        raise
    from .fleet_files import mount

    app = shared.make_app(host, token) if shared is not None else HttpApp(host, token=token)
    config = uvicorn.Config(
        mount(app, settings, token),
        host=settings.host,
        port=settings.http_port,
        loop=_loop(),
        http=http_protocol(app),
        lifespan="on",
        access_log=False,
        # the client is the socket's peer: X-Forwarded-For from a local process is
        # not trusted (and the middleware cost ~1 % of the loop per request)
        proxy_headers=False,
        server_header=False,  # "server: uvicorn" tells a client nothing it needs
        log_level="warning",
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        # whole seconds (uvicorn's type), never shorter than gRPC's exact grace
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
        limit_concurrency=None,
        backlog=2048,
    )
    server = graceful_server(uvicorn, config)
    tune_gc()
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(_run(server, http_socket, host, app, settings, token, on_ready, shared))
    finally:
        http_socket.close()


def check_ready(repository: ModelRepository, states: list[ModelState]) -> None:
    """Start only if something can be served; log each model that cannot.

    Readiness is per model: one broken model among good ones is reported not
    ready (``/v2/models/{m}/ready`` answers 503, its requests 503) while the
    others serve. A repository that does not exist, is empty, or has no model
    that loads and matches its sha256 fails start-up instead of answering
    ready and 404-ing every request.

    Raises:
        ConfigError: one line naming the repository and why each model failed.
    """
    root = repository.root
    if not root.is_dir():
        raise ConfigError(f"model repository {root} does not exist; build it with: "
                          f"edgecloud zoo build --repo {root}")  # fmt: skip
    if not any(state.ready for state in states):
        why = "; ".join(f"{s.name}: {s.error}" for s in states) or "it holds no model"
        raise ConfigError(f"no model in {root} can be served ({why})")
    for state in states:
        if not state.ready:
            log.warning("model %s is not ready: %s", state.name, state.error)


def listen(host: str, port: int, what: str, flag: str) -> socket.socket:
    """A TCP socket listening on ``host:port`` that no other process can share.

    ``SO_REUSEADDR`` only (a restart may bind over connections in TIME_WAIT;
    Linux still refuses a port with a live listener), never ``SO_REUSEPORT``.
    ConfigError naming the address, the reason and ``flag`` when it fails.
    """
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot listen for {what} on {address(host, port)}: no such address "
            f"({exc.strerror}); "
            "give an address of this machine with --host"
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(_bind_failure(what, host, port, flag, exc)) from None
    sock.setblocking(False)
    return sock


def _bind_failure(what: str, host: str, port: int, flag: str, exc: OSError) -> str:
    where = f"cannot listen for {what} on {address(host, port)}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where}: the port is in use by another process; stop it or choose another {flag}"
    if exc.errno == errno.EACCES:
        return (
            f"{where}: permission denied (ports below 1024 need privileges); choose another {flag}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: {host} is not an address of this machine; choose another --host"
    return f"{where}: {exc.strerror or exc}"


async def _run(
    server: Any, http_socket: socket.socket, host: ModelHost, app: HttpApp,
    settings: ServerSettings, token: str | None, on_ready: Callable[[Listening], None] | None,
    shared: SharedListeners | None,
) -> None:  # fmt: skip
    grpc_server, grpc_port = None, None
    drain: asyncio.Future[None] | None = None
    try:
        if settings.grpc_port is not None:
            from .grpc import start_grpc

            grpc_server, grpc_port = await start_grpc(
                host, settings, token, ready=lambda: app.ready, reuse_port=shared is not None
            )
            # gRPC drains beside HTTP, from the moment uvicorn is told to stop
            drain = asyncio.ensure_future(_drain_on_exit(server, grpc_server, settings))
        if on_ready is not None:
            tls = settings.tls_cert is not None
            on_ready(Listening(settings.host, bound_port(http_socket), grpc_port, tls))
        await server.serve(sockets=[http_socket])
    finally:
        if getattr(server, "force_exit", False):
            # a second Ctrl-C: abandon what runs (an onnxruntime call cannot be
            # interrupted, and the pool's threads would hold the exit until it ends);
            # stored idempotent answers are committed transactions already
            log.warning("forced exit: computations in flight are abandoned")
            logging.shutdown()
            os._exit(130)
        if drain is not None:
            server.should_exit = True  # also when serve() ended otherwise
            await drain
        await host.close()


async def _drain_on_exit(server: Any, grpc_server: Any, settings: ServerSettings) -> None:
    """Stop gRPC gracefully (calls in flight get ``shutdown_grace_s``) once uvicorn's
    ``should_exit`` is set (SIGTERM/SIGINT), while uvicorn drains HTTP."""
    while not server.should_exit:
        await asyncio.sleep(0.05)
    await grpc_server.stop(settings.shutdown_grace_s)


def graceful_server(uvicorn: Any, config: Any) -> Any:
    """uvicorn's ``Server``, except that a SIGTERM/SIGINT it caught is not raised
    again once ``serve()`` returns.

    uvicorn (0.29 and later) re-raises the signal after its own graceful stop so
    that the process dies of it. Its default handler then killed the server
    before the rest of its shutdown ran: gRPC calls in flight were cut
    ("Stream removed") instead of finishing within ``shutdown_grace_s``, and
    the host never closed (the idempotency store, computations that outlived
    their callers, the deferred metrics). The process now exits 0 after the
    whole graceful stop (as gunicorn's workers do).
    """
    import contextlib
    import signal
    import threading
    from collections.abc import Iterator

    handled = getattr(uvicorn.server, "HANDLED_SIGNALS", (signal.SIGINT, signal.SIGTERM))

    class GracefulServer(uvicorn.Server):  # type: ignore[misc]
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return GracefulServer(config)


#: The collector's generation-0 threshold while serving (CPython's default: 700).
GC_GEN0_THRESHOLD = 20_000


def tune_gc(gen0: int | None = GC_GEN0_THRESHOLD) -> None:
    """Set the cyclic garbage collector up for serving, once start-up is done.

    ``gc.freeze()`` moves everything alive now (modules, sessions, configs) to
    the permanent generation, which collections no longer traverse, and the
    generation-0 threshold rises from 700 tracked allocations to
    :data:`GC_GEN0_THRESHOLD`. A request allocates some fifty tracked
    containers (dicts, lists, tuples of the wire and ASGI layers), so the
    default ran a collection every dozen or so requests: 7 % of the event
    loop's time under wrk c=64 on digits-small (py-spy --native); 88.7 vs
    79.8 us of event-loop CPU per request (bench/request_cpu.py). Garbage
    without cycles is still freed at once by reference counting; cycles (an
    exception's traceback) wait for the next collection, a few thousand
    requests later at most.

    ``gen0=None`` freezes only (the edge gateway: its remote tier's httpx client
    leaves a reference cycle holding each request's body, so collections must
    stay frequent there; the issue-17 hostile review saw it grow by gigabytes
    with the raised threshold). A failed request's
    cycles are released at once either way (:mod:`.release`).
    """
    gc.collect()
    gc.freeze()
    if gen0 is not None:
        gc.set_threshold(gen0, 50, 100)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed, else asyncio's default.

    ``uvicorn.Config(loop=...)`` only takes effect through ``uvicorn.run`` /
    ``Server.run``; a server started inside our own runner (HTTP and gRPC on
    one loop) must pick the loop itself. Measured under wrk on digits-small
    (bench/server.py): the stdlib selector loop's transport and scheduling
    were about a fifth of the event loop's time per request.
    """
    try:
        import uvloop
    except ImportError:  # the asyncio loop: slower, still correct
        return None
    return uvloop.new_event_loop


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def http_protocol(app: HttpApp | None = None) -> Any:
    """uvicorn's httptools protocol with coalesced writes (:mod:`.protocol`), with the
    infer fast lane into ``app`` where it takes one (:meth:`HttpApp.fast_lane`), else h11."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    from .protocol import CoalescingHttpToolsProtocol, fast_lane

    if app is not None and app.fast_lane():
        settings = app.settings
        limit = min(OFFLOAD_BYTES, settings.max_request_bytes, settings.max_json_request_bytes)
        return fast_lane(app, limit)
    return CoalescingHttpToolsProtocol
