"""Running the server: HTTP (uvicorn) and gRPC on one event loop, graceful on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .._optional import require
from ..errors import ConfigError
from ..repository import ModelRepository
from .host import ModelHost, ModelState
from .http import HttpApp
from .settings import ServerSettings

__all__ = ["check_ready", "serve"]

log = logging.getLogger("edgecloud.server")


def serve(
    repository: ModelRepository,
    settings: ServerSettings,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve every model in ``repository`` until SIGINT/SIGTERM.

    Every model is loaded (files checked by sha256) before binding; start-up
    fails with ConfigError if nothing can be served (:func:`check_ready`),
    and ``on_ready`` is called once something can.
    """
    uvicorn = require("uvicorn", extra="server", feature="edgecloud serve")
    token = settings.bearer_token()
    host = ModelHost(repository, settings)
    check_ready(repository, host.load_all())
    if on_ready is not None:
        on_ready()
    app = HttpApp(host, token=token)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.http_port,
        loop=_loop(),
        http=_http(),
        lifespan="on",
        access_log=False,
        log_level="warning",
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        timeout_graceful_shutdown=int(max(1, settings.shutdown_grace_s)),
        limit_concurrency=None,
        backlog=2048,
    )
    server = uvicorn.Server(config)
    asyncio.run(_run(server, host, settings, token))


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


async def _run(server: Any, host: ModelHost, settings: ServerSettings, token: str | None) -> None:
    grpc_server = None
    if settings.grpc_port is not None:
        from .grpc import start_grpc

        grpc_server = await start_grpc(host, settings, token)
    try:
        await server.serve()
    finally:
        if grpc_server is not None:
            await grpc_server.stop(settings.shutdown_grace_s)
        await host.close()


def _loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _http() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"
