"""A recording front for a real server: every request that crosses its socket, kept.

Run as a process (``python _privacy_helpers.py --port P --upstream URL --record FILE``):
a stdlib ``ThreadingHTTPServer`` that appends each request it receives (method,
path, binary header length, body) to ``FILE`` as one JSON line, flushed before
it forwards the request to the real ``edgecloud serve`` at ``URL`` and relays
the answer. The egress tests search these bodies for the bytes of inputs that
may not leave the device.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

LENGTH = "Inference-Header-Content-Length"
FORWARDED = ("Content-Type", LENGTH, "Idempotency-Key", "Authorization")


@dataclass
class Arrival:
    """One request as it arrived at the server."""

    method: str
    path: str
    header_length: int | None
    body: bytes

    @property
    def model(self) -> str:
        return self.path.split("/")[3] if self.path.startswith("/v2/models/") else ""

    def tensors(self) -> dict[str, np.ndarray[Any, Any]]:
        """The input tensors of an infer request (empty for anything else)."""
        from edgecloud.wire.rest import decode_request

        if self.method != "POST" or not self.path.endswith("/infer"):
            return {}
        return dict(decode_request(self.body, self.header_length, self.model, None).request.inputs)

    def parameters(self) -> dict[str, Any]:
        if self.method != "POST" or not self.path.endswith("/infer"):
            return {}
        header = self.body[: self.header_length] if self.header_length else self.body
        params: dict[str, Any] = json.loads(header).get("parameters") or {}
        return params


def arrivals(record: Path, start: int = 0) -> Iterator[Arrival]:
    """The requests recorded in ``record``, from line ``start`` on."""
    if not record.exists():
        return
    for line in record.read_text().splitlines()[start:]:
        entry = json.loads(line)
        yield Arrival(
            entry["method"], entry["path"], entry["header_length"], base64.b64decode(entry["body"])
        )


def contains(arrival: Arrival, secret: np.ndarray[Any, Any]) -> bool:
    """Whether any row of ``secret`` crossed in ``arrival``: raw bytes or decoded values.

    The raw body catches the binary extension; decoding catches JSON bodies
    (floats written as text) and any reordering into a sub-batch.
    """
    rows = [r.tobytes() for r in np.ascontiguousarray(secret).reshape(secret.shape[0], -1)]
    haystacks = [arrival.body]
    for array in arrival.tensors().values():
        if array.dtype.kind == "f":
            haystacks.append(np.ascontiguousarray(array, dtype=secret.dtype).tobytes())
    return any(row in hay for row in rows for hay in haystacks)


class _Recorder(BaseHTTPRequestHandler):
    upstream: tuple[str, int]
    record: Path
    lock = threading.Lock()

    def do_GET(self) -> None:
        self._relay(b"")

    def do_POST(self) -> None:
        self._relay(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def _relay(self, body: bytes) -> None:
        length = self.headers.get(LENGTH)
        entry = {
            "method": self.command,
            "path": self.path,
            "header_length": int(length) if length is not None else None,
            "body": base64.b64encode(body).decode(),
        }
        with self.lock, self.record.open("a") as out:
            out.write(json.dumps(entry) + "\n")
        headers = {k: v for k in FORWARDED if (v := self.headers.get(k)) is not None}
        upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            reply = upstream.getresponse()
            content = reply.read()
        finally:
            upstream.close()
        self.send_response(reply.status)
        for key in ("Content-Type", LENGTH):
            if (value := reply.getheader(key)) is not None:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--record", type=Path, required=True)
    args = parser.parse_args()
    target = urlsplit(args.upstream)
    _Recorder.upstream = (target.hostname or "127.0.0.1", target.port or 80)
    _Recorder.record = args.record
    ThreadingHTTPServer(("127.0.0.1", args.port), _Recorder).serve_forever()


if __name__ == "__main__":
    main()
