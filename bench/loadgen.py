"""A closed-loop HTTP/1.1 load generator on raw asyncio streams.

``concurrency`` connections each send the same prepared request, wait for the
whole response, and send again, for ``seconds``. Keep-alive, no client
library in the loop, so the generator costs far less CPU than the servers it
measures. Latencies are per request, wall clock.

    python bench/loadgen.py URL_PATH BODY_FILE --port 8000 -c 8 -d 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0

    def summary(self) -> dict[str, float | int | dict[int, int]]:
        lat = np.array(self.latencies) if self.latencies else np.array([np.nan])
        ok = self.statuses.get(200, 0)
        return {
            "concurrency": self.concurrency,
            "requests": len(self.latencies),
            "ok": ok,
            "req_per_s": ok / self.seconds,
            "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "statuses": self.statuses,
            "transport_errors": self.transport_errors,
        }


def build_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


async def _worker(
    host: str, port: int, request: bytes, stop_at: float, warm_until: float, result: LoadResult
) -> None:
    while time.perf_counter() < stop_at:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            result.transport_errors += 1
            await asyncio.sleep(0.01)
            continue
        try:
            while True:
                started = time.perf_counter()
                if started >= stop_at:
                    return
                writer.write(request)
                status = await _read_response(reader)
                done = time.perf_counter()
                if started >= warm_until:
                    result.latencies.append(done - started)
                    result.statuses[status] = result.statuses.get(status, 0) + 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.transport_errors += 1
        finally:
            writer.close()


async def run_load(
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
    host: str = "127.0.0.1",
) -> LoadResult:
    request = build_request(host, port, path, body, headers)
    start = time.perf_counter()
    result = LoadResult(concurrency, seconds)
    warm_until, stop_at = start + warmup, start + warmup + seconds
    await asyncio.gather(
        *(_worker(host, port, request, stop_at, warm_until, result) for _ in range(concurrency))
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path")
    parser.add_argument("body_file")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("-d", "--seconds", type=float, default=5.0)
    parser.add_argument("-H", "--header", action="append", default=[])
    args = parser.parse_args()
    headers = dict(h.split(": ", 1) for h in args.header)
    headers.setdefault("Content-Type", "application/json")
    body = open(args.body_file, "rb").read()  # noqa: SIM115
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(
        run_load(
            args.port, args.path, body, headers,
            concurrency=args.concurrency, seconds=args.seconds,
        )
    )  # fmt: skip
    print(json.dumps(result.summary()))


if __name__ == "__main__":
    main()
