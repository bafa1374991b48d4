"""The bare-stack ceiling: an ASGI app that reads the body and answers a fixed JSON.

Run on the same server stack as ``edgecloud serve`` (uvicorn + httptools +
uvloop), it measures what that stack alone can do on this machine: any
request gets its body read to the end and a 200-byte ``application/json``
answer. bench/server.py starts it with::

    python -m uvicorn ceiling_app:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

#: A fixed answer of exactly 200 bytes, shaped like a small infer response.
BODY = (b'{"model_name":"ceiling","outputs":[{"name":"y","datatype":"FP32","shape":[1,1],'
        b'"data":[0.5]}],"padding":"' + b"x" * 200)[:198] + b'"}'  # fmt: skip
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
assert len(BODY) == 200

Message = MutableMapping[str, Any]


async def app(
    scope: Message,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    """Read the whole body, answer :data:`BODY`; lifespan accepted."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
