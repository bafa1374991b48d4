"""Cost of the REST codec per request, in-process: the shortcut against the general path.

``decode_request`` and ``encode_response`` (edgecloud.wire.rest) with their
common-case shortcut (edgecloud.wire.fastpath) and without it
(``shortcut=False``), on the bodies bench/server.py sends: digits-small
(FP32 [1, 64] in, FP32 [1, 10] out) and minilm (INT64 [1, 16] x 2 in, FP32
[1, 384] out), as JSON and with binary tensors, plus a larger FP32 [1, 4096]
JSON body. Timed in alternating rounds (bench/_common.py ``interleaved``)
so machine drift hits both alike, on this thread's CPU time
(``time.thread_time``: other jobs on a shared machine cannot stretch it;
the codec never waits); the table gives the median and the minimum of the
per-round means, in microseconds per call.

    python bench/wire_codec.py [--rounds 21] [--per-round 1000]

Writes bench/results/wire_codec.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import infer_bodies, interleaved, machine, parse_bench_args, summary, write_result

from edgecloud.tensors import InferResponse, Trace
from edgecloud.wire.rest import decode_request, encode_response

Inputs = dict[str, np.ndarray[Any, Any]]


def cases() -> dict[str, tuple[Inputs, np.ndarray[Any, Any]]]:
    """Inputs and one output of each case (seeded; as bench/server.py's ``inputs_of``)."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 30521, size=(1, 16), dtype=np.int64)
    return {
        "digits-small": (
            {"pixels": rng.random((1, 64), dtype=np.float32)},
            rng.random((1, 10), dtype=np.float32),
        ),
        "minilm": (
            {"input_ids": ids, "attention_mask": np.ones_like(ids)},
            rng.random((1, 384), dtype=np.float32),
        ),
        "fp32-4096": (
            {"x": rng.random((1, 4096), dtype=np.float32)},
            rng.random((1, 4096), dtype=np.float32),
        ),
    }


def bodies(inputs: Inputs) -> dict[str, tuple[bytes, int | None]]:
    """The request as JSON and with binary tensors (outputs binary too): body, header length."""
    as_json, header, binary = infer_bodies(inputs)
    return {"json": (as_json, None), "binary": (binary, len(header))}


def contenders() -> dict[str, Callable[[], object]]:
    """``<case>/<encoding>/<decode|encode>/<shortcut|general>`` -> one call."""
    out: dict[str, Callable[[], object]] = {}
    for case, (inputs, output) in cases().items():
        for encoding, (body, length) in bodies(inputs).items():
            decoded = decode_request(body, length, case, None)
            response = InferResponse(case, "1", {"out": output}, Trace(case))
            for path, shortcut in (("shortcut", True), ("general", False)):
                key = f"{case}/{encoding}"
                out[f"{key}/decode/{path}"] = _decode(body, length, case, shortcut)
                out[f"{key}/encode/{path}"] = _encode(response, decoded, shortcut)
    return out


def _decode(body: bytes, length: int | None, model: str, shortcut: bool) -> Callable[[], object]:
    return lambda: decode_request(body, length, model, None, shortcut=shortcut)


def _encode(response: InferResponse, decoded: Any, shortcut: bool) -> Callable[[], object]:
    return lambda: encode_response(response, decoded, shortcut=shortcut)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", default=21, type=int)
    parser.add_argument("--per-round", default=1000, type=int)
    args = parse_bench_args(parser)
    calls = contenders()
    samples = interleaved(
        calls, rounds=args.rounds, per_round=args.per_round, clock=time.thread_time
    )
    results: dict[str, Any] = {}
    table = Table(title="REST codec, microseconds per call (median / min of round means)")
    for column in ("case", "encoding", "step", "shortcut", "general", "general / shortcut"):
        table.add_column(column)
    for name in calls:
        case, encoding, step, path = name.split("/")
        stats = summary(samples[name])
        stats["min_us"] = min(samples[name]) * 1e6
        results.setdefault(case, {}).setdefault(encoding, {}).setdefault(step, {})[path] = stats
    for case, encodings in results.items():
        for encoding, steps in encodings.items():
            for step, paths in steps.items():
                fast, slow = paths["shortcut"], paths["general"]
                paths["speedup"] = slow["median_us"] / fast["median_us"]
                table.add_row(
                    case,
                    encoding,
                    step,
                    f"{fast['median_us']:.2f} / {fast['min_us']:.2f}",
                    f"{slow['median_us']:.2f} / {slow['min_us']:.2f}",
                    f"{paths['speedup']:.1f}x",
                )
    Console().print(table)
    payload = {
        "clock": "thread_time",
        "rounds": args.rounds,
        "per_round": args.per_round,
        "machine": machine(),
        "cases": results,
    }
    print(f"wrote {write_result('wire_codec', payload)}")


if __name__ == "__main__":
    main()
