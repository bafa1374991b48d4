"""``edgecloud edge``: a hybrid deployment behind the Open Inference Protocol on localhost.

Apps in any language call the gateway exactly as they would call a v2 server;
the deployment (cascade, fallback, privacy guard, outbox) decides per request,
and every response carries its trace in the ``edgecloud_trace`` parameter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path

from .deployment import Deployment, load
from .errors import DeadlineExceededError, ModelNotFoundError
from .repository import ModelConfig
from .server.host import ModelState
from .server.metrics import ServerMetrics
from .server.settings import ServerSettings
from .tensors import InferRequest, InferResponse

__all__ = ["DeploymentHost", "run_gateway"]

log = logging.getLogger("edgecloud.gateway")


class DeploymentHost:
    """Adapts a Deployment to the HTTP front end's host interface."""

    def __init__(self, deployment: Deployment, settings: ServerSettings) -> None:
        self.deployment = deployment
        self.settings = settings
        self.metrics = ServerMetrics()
        self.states = {
            s.name: ModelState(s.name, s.served, ready=s.error is None, error=s.error)
            for s in deployment.repository.status()
        }

    def config(self, model: str) -> ModelConfig:
        if model not in self.states:
            known = ", ".join(self.states) or "none"
            raise ModelNotFoundError(f"no model {model!r} behind this gateway (models: {known})")
        return self.deployment.repository.config(model)

    def ready(self, model: str, version: str | None = None) -> bool:
        state = self.states.get(model)
        return bool(state and state.ready)

    async def infer(self, request: InferRequest) -> InferResponse:
        timeout = self.settings.request_timeout_s
        try:
            return await asyncio.wait_for(self.deployment.infer_async(request), timeout)
        except TimeoutError:
            raise DeadlineExceededError(f"no answer within the gateway's {timeout:g} s") from None

    async def drain_outbox_forever(self, every_s: float = 5.0) -> None:
        """Send what the outbox holds whenever the link allows (the re-sync loop)."""
        outbox = self.deployment.outbox
        if outbox is None or not self.deployment.remotes:
            return
        while True:
            if len(outbox):
                result = await asyncio.to_thread(self.deployment.drain_outbox)
                if result is not None and result.delivered:
                    log.info("outbox: delivered %d, %d left", result.delivered, result.remaining)
            await asyncio.sleep(every_s)


def run_gateway(path: Path, settings: ServerSettings) -> None:
    """Serve the deployment at ``path`` on ``settings.host:settings.http_port`` until SIGTERM.

    Of the server settings the gateway uses the listener's (host, http_port,
    TLS), token, limits (max_request_bytes, request_timeout_s), access_log and
    shutdown_grace_s; how models run is the deployment file's business.
    """
    from .server.app import listen

    settings.check_tls()
    sock = listen(settings.host, settings.http_port, "the gateway's HTTP", "--port")
    try:
        _serve_gateway(path, settings, sock)
    finally:
        sock.close()


def _serve_gateway(path: Path, settings: ServerSettings, sock: socket.socket) -> None:
    import uvicorn

    from .server.http import HttpApp

    deployment = load(path)
    host = DeploymentHost(deployment, settings)
    app = HttpApp(host, token=settings.bearer_token(), expose_trace=True)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.http_port, lifespan="on", access_log=False,
        log_level="warning", timeout_graceful_shutdown=int(max(1, settings.shutdown_grace_s)),
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
    )  # fmt: skip

    async def main() -> None:
        drainer = asyncio.create_task(host.drain_outbox_forever())
        try:
            await uvicorn.Server(config).serve(sockets=[sock])
        finally:
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drainer
            deployment.close()

    asyncio.run(main())
