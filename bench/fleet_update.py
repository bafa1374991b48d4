"""Fleet updates: delta sizes, hot swap under load, and a staged rollout to 20 devices.

    python bench/fleet_update.py [--repo model-repo] [--only deltas|swap|fleet] [--quick]

Three sections, each runnable alone (``--only``); a section whose pieces are
missing (the delta module, LocalBackend.publish, the update repository, the
agent) is skipped with the reason in the table and the JSON:

* **deltas** — bytes sent, delta / full model, for (a) a last-layer fine-tune
  of ``digits-large`` (its last Gemm retrained by softmax-regression SGD on
  the digits training split, everything else untouched: top-level
  ``delta_ratio``), (b) a full fine-tune of ``minilm`` (every float weight
  moved by a Gaussian step of 1e-3 of its tensor's std — an assumed stand-in
  for a low-learning-rate epoch, not a measured fine-tune) with the lossless
  and the int8 codec, int8 with the cosine of its outputs to the new model's
  on the version's samples, (c) an unchanged-architecture retrain of
  ``digits-large`` (every tensor's values redrawn: nothing shared).
* **swap** — 100 reloads of a changed version through ``edgecloud serve
  --model-control explicit`` (a new version directory each time, then
  ``POST .../load``) while an open-loop client in a separate process sends
  200 req/s over HTTP: failed requests, and p50/p99 latency (from each
  request's scheduled time: no coordinated omission) during the swaps vs a
  phase without — as a user of the server sees it (a client in the same
  process as the swaps measured its own GIL starvation instead).
* **fleet** — a real ``edgecloud serve --fleet`` and 20 device agents
  (separate processes, loopback): seconds from ``fleet rollout --auto`` with
  a 5 % canary to every device running the new version, then a
  labels-permuted version: rolled back on every canary device, never on the
  others, the rollout aborted.

Prints a table, writes bench/results/fleet_update.json and fleet_update.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, parse_bench_args, results_dir, write_result

from edgecloud import LocalBackend, ModelRepository

MODEL = "digits-large"
console = Console()


class Skip(Exception):
    """A section cannot run here: the reason goes into the results."""


# -- model variants (onnx is a bench-time dependency, not the device's) ----------


def _onnx_model(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


def _arrays(model: Any) -> dict[str, np.ndarray[Any, Any]]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _with(model: Any, changes: dict[str, np.ndarray[Any, Any]]) -> bytes:
    """The model with some initializers' values replaced (same names, dtypes, shapes)."""
    for t in model.graph.initializer:
        if t.name in changes:
            value = np.ascontiguousarray(changes[t.name], dtype=np.float32)
            assert value.shape == tuple(t.dims), t.name
            t.raw_data = value.tobytes()
    data: bytes = model.SerializeToString()
    return data


def last_layer_finetune(path: Path, steps: int = 200, lr: float = 0.5) -> tuple[bytes, bytes]:
    """(old, new) bytes of digits-large with its last Gemm retrained on the train split.

    The features are the penultimate ReLU activations (computed from the
    model's own weights); the last layer is fitted by full-batch softmax
    regression (cross-entropy, SGD), starting from its current weights.
    """
    from edgecloud.zoo import datasets

    model = _onnx_model(path)
    old = model.SerializeToString()
    w = _arrays(model)
    train = datasets.digits("train")
    x, y = train.x.astype(np.float32), np.asarray(train.y)
    h = np.maximum(x @ w["0.weight"].T + w["0.bias"], 0)
    h = np.maximum(h @ w["2.weight"].T + w["2.bias"], 0)
    wl, bl = w["4.weight"].copy(), w["4.bias"].copy()
    onehot = np.eye(wl.shape[0], dtype=np.float32)[y]
    for _ in range(steps):
        logits = h @ wl.T + bl
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        grad = (p - onehot) / len(x)
        wl -= lr * (grad.T @ h)
        bl -= lr * grad.sum(axis=0)
    return old, _with(model, {"4.weight": wl, "4.bias": bl})


def labels_permuted(new: bytes) -> bytes:
    """A version whose outputs are wrong: the last layer's rows rolled by one class."""
    import onnx

    model = onnx.load_from_string(new)
    w = _arrays(model)
    return _with(
        model, {"4.weight": np.roll(w["4.weight"], 1, axis=0), "4.bias": np.roll(w["4.bias"], 1)}
    )


def full_finetune(path: Path, scale: float = 1e-3, seed: int = 0) -> tuple[bytes, bytes]:
    """(old, new) of a model whose every float tensor moved by N(0, (scale * std)^2)."""
    rng = np.random.default_rng(seed)
    model = _onnx_model(path)
    old = model.SerializeToString()
    changes = {
        name: a + rng.normal(0, scale * float(a.std()), a.shape).astype(np.float32)
        for name, a in _arrays(model).items()
        if a.dtype == np.float32 and a.size > 1
    }
    return old, _with(model, changes)


def retrain(path: Path, seed: int = 1) -> tuple[bytes, bytes]:
    """(old, new) of the same architecture with every float tensor's values redrawn."""
    rng = np.random.default_rng(seed)
    model = _onnx_model(path)
    old = model.SerializeToString()
    changes = {
        name: rng.permutation(a.reshape(-1)).reshape(a.shape)
        for name, a in _arrays(model).items()
        if a.dtype == np.float32
    }
    return old, _with(model, changes)


# -- section (a)(b)(c): deltas -------------------------------------------------------


def _cosine(old: bytes, new: bytes, rebuilt: bytes, samples: Path) -> float:
    """Mean cosine between the new model's outputs and the rebuilt one's, on the samples."""
    import onnxruntime as ort

    feed = dict(np.load(samples))
    feed.pop("labels", None)
    outs = []
    for data in (new, rebuilt):
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        outs.append(session.run(None, {k: v for k, v in feed.items() if k in names}))
    cosines = []
    for a, b in zip(*outs, strict=True):
        a2, b2 = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
        num = (a2 * b2).sum(axis=1)
        den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1) + 1e-30
        cosines.append(float((num / den).min()))
    return min(cosines)


def section_deltas(repo: ModelRepository) -> dict[str, Any]:
    try:
        from edgecloud.fleet.delta import apply_delta, make_delta
    except ImportError as exc:
        raise Skip(f"edgecloud.fleet.delta is not available ({exc.name})") from None
    large = repo.get(MODEL).model_path
    minilm = repo.get("minilm")
    cases: list[tuple[str, str, Callable[[], tuple[bytes, bytes]], tuple[str, ...]]] = [
        (
            "a",
            "digits-large last-layer fine-tune",
            lambda: last_layer_finetune(large),
            ("xor-zstd",),
        ),
        (
            "b",
            "minilm full fine-tune",
            lambda: full_finetune(minilm.model_path),
            ("xor-zstd", "int8"),
        ),
        ("c", "digits-large retrain", lambda: retrain(large), ("xor-zstd",)),
    ]
    rows = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("deltas", total=len(cases))
        for key, name, build, codecs in cases:
            old, new = build()
            for codec in codecs:
                started = time.perf_counter()
                delta = make_delta(old, new, codec=codec)
                make_s = time.perf_counter() - started
                started = time.perf_counter()
                rebuilt = apply_delta(old, delta)
                apply_s = time.perf_counter() - started
                samples = (
                    minilm.path / "samples.npz"
                    if key == "b"
                    else repo.get(MODEL).path / "samples.npz"
                )
                lossless = rebuilt == new
                row = {
                    "case": key,
                    "what": name,
                    "codec": codec,
                    "full_bytes": len(new),
                    "delta_bytes": len(delta),
                    "ratio": len(delta) / len(new),
                    "lossless": lossless,
                    "make_s": make_s,
                    "apply_s": apply_s,
                    "cosine_to_new": 1.0 if lossless else _cosine(old, new, rebuilt, samples),
                }
                rows.append(row)
            progress.advance(task)
    ratio_a = next(r["ratio"] for r in rows if r["case"] == "a")
    return {"rows": rows, "delta_ratio": ratio_a}


# -- hot swap under load -------------------------------------------------------------


def section_swap(repo: ModelRepository, swaps: int, rate: float, quiet_s: float) -> dict[str, Any]:
    """Hot swap as a user sees it: a client in another process, a real server.

    ``edgecloud serve --model-control explicit --workers 1`` serves a copy of
    ``digits-large``; an open-loop client (``--swap-client``: a separate
    process, so the server's GIL and the swaps do not starve it) sends
    ``rate`` req/s over keep-alive HTTP/1.1 for ``quiet_s`` without swaps,
    then while this process makes ``swaps`` reloads of a changed version
    (each a new version directory, alternating the zoo's weights and a
    last-layer fine-tune, then ``POST /v2/repository/models/M/load``: the
    server opens and warms the new session before it drops the old). A
    request failed if it got no 200 (status or transport error). Latency is
    from each request's scheduled send time (no coordinated omission).
    """
    from edgecloud.server.launch import serve_process

    entry = repo.get(MODEL)
    old, new = last_layer_finetune(entry.model_path)
    workdir = Path(tempfile.mkdtemp(prefix="bench-swap-"))
    served = ModelRepository(workdir / "repo")

    def add(data: bytes) -> None:
        served.add_version(
            MODEL, data, config=repo.config(MODEL), samples=entry.path / "samples.npz"
        )

    add(old)
    server = serve_process(
        served.root, extra=["--model-control", "explicit", "--load-model", MODEL],
        log=workdir / "serve.log",
    )  # fmt: skip
    client = subprocess.Popen(
        [sys.executable, __file__, "--swap-client", server.url, str(rate)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    marks: dict[str, float] = {}
    load_ms: list[float] = []
    load_errors: list[str] = []
    try:
        assert client.stdout is not None
        client.stdout.readline()  # "ready": the client has started sending
        time.sleep(quiet_s)
        marks["swaps_start"] = time.monotonic()
        import httpx

        with httpx.Client(base_url=server.url, timeout=60) as http:
            for i in range(swaps):
                add(new if i % 2 == 0 else old)
                t = time.perf_counter()
                r = http.post(f"/v2/repository/models/{MODEL}/load", json={})
                load_ms.append((time.perf_counter() - t) * 1e3)
                if r.status_code != 200:
                    load_errors.append(f"{r.status_code}: {r.text[:200]}")
                time.sleep(0.05)
        marks["swaps_end"] = time.monotonic()
        time.sleep(0.5)
    finally:
        out, _ = client.communicate("", timeout=120)
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    sent = json.loads(out.splitlines()[-1])
    summary = _swap_summary(sent["rows"], marks, swaps, rate, load_ms, load_errors)
    return {**summary, "transport_errors": sent["transport_errors"]}


def _swap_summary(
    sent: list[list[float]], marks: dict[str, float], swaps: int, rate: float,
    load_ms: list[float], load_errors: list[str],
) -> dict[str, Any]:  # fmt: skip
    """p50/p99 and failures per phase from the client's (scheduled, latency_s, status)."""
    phases: dict[str, list[tuple[float, int]]] = {"without swaps": [], "during swaps": []}
    for scheduled, latency, status in sent:
        if scheduled < marks["swaps_start"]:
            phases["without swaps"].append((latency, int(status)))
        elif scheduled <= marks["swaps_end"]:
            phases["during swaps"].append((latency, int(status)))
    out: dict[str, Any] = {
        "how": "client in a separate process (open loop, keep-alive HTTP/1.1) against "
        "edgecloud serve --model-control explicit --workers 1; each swap = a new version "
        "directory + POST /v2/repository/models/M/load",
        "swaps": swaps,
        "swaps_failed": len(load_errors),
        "load_p50_ms": float(np.percentile(load_ms, 50)) if load_ms else None,
        "rate_rps": rate,
        "errors": load_errors[:5],
        "swaps_s": marks["swaps_end"] - marks["swaps_start"],
    }
    for phase, rows in phases.items():
        ms = np.array([lat for lat, _ in rows] or [np.nan]) * 1e3
        failed = sum(1 for _, status in rows if status != 200)
        statuses = sorted({status for _, status in rows})
        out[phase] = {
            "requests": len(rows),
            "failed": failed,
            "statuses": statuses,
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
        }
    out["failed_requests"] = out["during swaps"]["failed"]
    out["latencies_ms"] = {
        p: (np.array([lat for lat, _ in rows]) * 1e3).round(3).tolist()
        for p, rows in phases.items()
    }
    return out


def swap_client(argv: list[str]) -> None:
    """``--swap-client URL RATE``: open-loop digits-large requests until stdin closes.

    Prints ``{"rows": [[scheduled monotonic s, latency s, status], ...],
    "transport_errors": [first 5]}`` (status -1: transport error). Connections
    are pooled; a request waits for none (a new one opens when all are busy);
    one idle for 2 s is closed, not reused (uvicorn closes it after 5 s: a
    reuse would race that close, as HTTP clients' pools avoid).
    """
    import asyncio
    from urllib.parse import urlsplit

    from loadgen import _read_response, build_request

    from edgecloud.zoo import datasets

    url, rate = urlsplit(argv[0]), float(argv[1])
    host, port = url.hostname or "127.0.0.1", int(url.port or 80)
    x = datasets.digits("test").x[:1].astype(np.float32)
    body = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}]}).encode()  # fmt: skip
    wire = build_request(host, port, f"/v2/models/{MODEL}/infer", body,
                         {"Content-Type": "application/json"})  # fmt: skip
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    rows: list[list[float]] = []
    failures: list[str] = []
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while idle:
            reader, writer, used = idle.pop()
            if time.monotonic() - used < 2.0:
                return reader, writer
            writer.close()  # the server may have closed it (uvicorn's 5 s keep-alive timeout)
        return await asyncio.open_connection(host, port)

    async def one(scheduled: float) -> None:
        status = -1
        try:
            reader, writer = await connection()
            writer.write(wire)
            status = await _read_response(reader)
            idle.append((reader, writer, time.monotonic()))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            failures.append(f"{type(exc).__name__}: {exc}"[:200])
        rows.append([scheduled, time.monotonic() - scheduled, status])

    async def main() -> None:
        print("ready", flush=True)
        start, n, tasks = time.monotonic(), 0, set()
        while not stop.is_set():
            scheduled = start + n / rate
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.gather(*tasks)

    asyncio.run(main())
    print(json.dumps({"rows": rows, "transport_errors": failures[:5]}))


# -- publish -> 20 agents ------------------------------------------------------------


def _fleet_pieces() -> dict[str, Any]:
    try:
        from edgecloud.fleet import agent, keys, publish, update_repo
        from edgecloud.fleet.rollout import RolloutControl, run_auto, start
    except ImportError as exc:
        raise Skip(f"fleet piece missing: {exc.name}") from None
    return {
        "agent": agent,
        "keys": keys,
        "publish": publish,
        "update_repo": update_repo,
        "RolloutControl": RolloutControl,
        "run_auto": run_auto,
        "start": start,
    }


def _source_repo(zoo: ModelRepository, root: Path) -> tuple[ModelRepository, dict[int, bytes]]:
    """digits-large v1 (the zoo's), v2 (last-layer fine-tune), v3 (labels permuted)."""
    entry = zoo.get(MODEL)
    old, new = last_layer_finetune(entry.model_path)
    repo = ModelRepository(root)
    files = {1: old, 2: new, 3: labels_permuted(new)}
    for version, data in files.items():
        repo.add_version(
            MODEL,
            data,
            config=zoo.config(MODEL),
            version=version,
            samples=entry.path / "samples.npz",
        )
    return repo, files


def agent_child(argv: list[str]) -> None:
    """One device: ``--agent DEVICE STATE_DIR SERVER ROOT_FILE`` (runs until SIGTERM)."""
    from edgecloud.fleet.agent import AgentSettings, UpdateAgent

    device, state, server, root = argv
    state_dir = Path(state)
    repo = ModelRepository(state_dir / "models")
    repo.root.mkdir(parents=True, exist_ok=True)
    settings = AgentSettings(server=server, models=(MODEL,), device_id=device, interval_s=1.0)
    agent = UpdateAgent(
        repo,
        LocalBackend(repo),
        settings,
        state_dir=state_dir / "agent",
        trust_root=Path(root).read_bytes(),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    agent.start()
    agent.run(stop)
    agent.close()


def section_fleet(zoo: ModelRepository, agents: int, timeout_s: float) -> dict[str, Any]:
    from edgecloud.server.fleet_telemetry import DeviceStatus
    from edgecloud.server.launch import serve_process

    p = _fleet_pieces()
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    os.environ["EDGECLOUD_STATE_DIR"] = str(work / "state")  # the server's telemetry store
    signers = p["keys"].new_signers()
    p["keys"].write_signers(work / "keys", signers)
    fleet_repo = p["update_repo"].UpdateRepository.create(work / "fleet", signers)
    root_file = work / "root.json"
    root_file.write_bytes(fleet_repo.root_bytes())
    source, _ = _source_repo(zoo, work / "models")
    p["publish"].publish(source, MODEL, 1, fleet_repo)
    server = serve_process(
        source.root, extra=["--fleet", str(work / "fleet")], log=work / "server.log"
    )
    url = server.url
    import httpx

    def devices() -> list[DeviceStatus]:
        reply = httpx.get(f"{url}/fleet/status", params={"model": MODEL}, timeout=30)
        reply.raise_for_status()
        return [DeviceStatus(**d) for d in reply.json()["devices"]]

    t0 = [0.0]  # start of the good rollout, once it starts
    timeline: list[tuple[float, int]] = []

    def record(ds: list[DeviceStatus]) -> list[DeviceStatus]:
        if t0[0]:
            timeline.append((time.monotonic() - t0[0], sum(d.version == 2 for d in ds)))
        return ds

    def wait(what: str, until: Callable[[list[DeviceStatus]], bool]) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if until(record(devices())):
                return time.monotonic() - started
            time.sleep(0.25)
        raise Skip(f"timed out after {timeout_s:g} s waiting for {what}")

    control = p["RolloutControl"](work / "fleet", signers)
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    finished = False
    try:
        control.change(
            MODEL, lambda r, pub: p["start"](r, model=MODEL, version=1, percent=100, published=pub)
        )
        for i in range(agents):
            log = open(work / f"agent-{i:02d}.log", "wb")  # noqa: SIM115 — closed with the process
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--agent",
                        f"dev-{i:02d}",
                        str(work / f"dev-{i:02d}"),
                        url,
                        str(root_file),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        boot_s = wait(
            f"{agents} agents on version 1", lambda ds: sum(d.version == 1 for d in ds) == agents
        )
        # a good version: canary 5 %, then everyone
        t0[0] = time.monotonic()
        p["publish"].publish(source, MODEL, 2, fleet_repo)  # deltas built and signed
        publish_s = time.monotonic() - t0[0]
        control.change(
            MODEL,
            lambda r, pub: p["start"](
                r, model=MODEL, version=2, percent=5, published=pub, stages=(5, 100)
            ),
        )

        good = p["run_auto"](
            control, MODEL, lambda: record(devices()), interval_s=0.5, timeout_s=timeout_s
        )
        all_s = wait(
            f"{agents} agents on version 2", lambda ds: sum(d.version == 2 for d in ds) == agents
        )
        publish_to_all_s = time.monotonic() - t0[0]
        t0[0] = 0.0
        del all_s
        # a bad version: outputs permuted
        p["publish"].publish(source, MODEL, 3, fleet_repo)
        control.change(
            MODEL,
            lambda r, pub: p["start"](
                r, model=MODEL, version=3, percent=5, published=pub, stages=(5, 100)
            ),
        )
        bad = p["run_auto"](control, MODEL, devices, interval_s=0.5, timeout_s=timeout_s)
        time.sleep(3.0)  # let every device take the abort
        final = devices()
        canary = [d.device for d in final if d.last_rollback_from == 3]
        reached_rest = [d.device for d in final if d.version == 3 or d.last_health_version == 3]
        result = {
            "agents": agents,
            "boot_to_v1_s": boot_s,
            "publish_to_all_s": publish_to_all_s,
            "publish_s": publish_s,
            "good_rollout": good.state,
            "good_reason": good.reason,
            "bad_rollout": bad.state,
            "bad_reason": bad.reason,
            "bad_rolled_back_on": canary,
            "bad_reached_devices": sorted(set(reached_rest)),
            "bad_never_reached_rest": set(reached_rest) <= set(canary),
            "final_versions": {d.device: d.version for d in final},
            "timeline": timeline,
        }
        finished = True
        return result
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()
        if finished:  # kept on failure: the agents' and the server's logs
            shutil.rmtree(work, ignore_errors=True)


# -- report ------------------------------------------------------------------------------


def run_section(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return fn()
    except Skip as exc:
        console.print(f"[yellow]{name}: skipped[/] — {exc}")
        return {"skipped": str(exc)}


def table(results: dict[str, Any]) -> Table:
    t = Table("section", "case", "value", "target")
    deltas = results.get("deltas", {})
    for r in deltas.get("rows", []):
        cos = "" if r["lossless"] else f", cosine {r['cosine_to_new']:.6f}"
        target = {
            "a": "<= 5 %",
            "b": "int8 <= 30 %, cosine >= 0.999" if r["codec"] == "int8" else "",
        }.get(r["case"], "")
        t.add_row(
            "deltas",
            f"({r['case']}) {r['what']}, {r['codec']}",
            f"{r['delta_bytes']:,} / {r['full_bytes']:,} B = {r['ratio']:.1%}{cos}",
            target,
        )
    swap = results.get("swap", {})
    for phase in ("without swaps", "during swaps"):
        if phase in swap:
            s = swap[phase]
            t.add_row(
                "swap",
                f"{phase} ({s['requests']} req @ {swap['rate_rps']:g}/s)",
                f"failed {s['failed']}, p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms",
                "0 failed" if phase == "during swaps" else "",
            )
    fleet = results.get("fleet", {})
    if "publish_to_all_s" in fleet:
        t.add_row(
            "fleet",
            f"publish -> all {fleet['agents']} agents (5 % canary first)",
            f"{fleet['publish_to_all_s']:.1f} s ({fleet['good_rollout']})",
            "",
        )
        t.add_row(
            "fleet",
            "labels-permuted version",
            f"{fleet['bad_rollout']}; rolled back on {len(fleet['bad_rolled_back_on'])}, "
            f"reached others: {not fleet['bad_never_reached_rest']}",
            "rolled back, never the rest",
        )
    for name in ("deltas", "swap", "fleet"):
        if "skipped" in results.get(name, {}):
            t.add_row(name, "skipped", results[name]["skipped"], "")
    return t


def figure(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    rows = results.get("deltas", {}).get("rows", [])
    ax = axes[0]
    if rows:
        labels = [f"({r['case']}) {r['codec']}" for r in rows]
        ax.bar(
            labels,
            [100 * r["ratio"] for r in rows],
            color=["C0" if r["lossless"] else "C1" for r in rows],
        )
        ax.set_ylabel("delta / full model (%)")
        ax.set_title("bytes sent (a) last layer, (b) minilm full, (c) retrain")
    ax = axes[1]
    for phase, lat in results.get("swap", {}).get("latencies_ms", {}).items():
        ax.hist(lat, bins=60, histtype="step", label=phase, log=True)
    ax.set_xlabel("latency (ms)")
    ax.set_title("200 req/s, 100 hot swaps")
    ax.legend() if results.get("swap", {}).get("latencies_ms") else None
    ax = axes[2]
    timeline = results.get("fleet", {}).get("timeline", [])
    if timeline:
        ax.step([t for t, _ in timeline], [n for _, n in timeline], where="post")
        ax.set_xlabel("seconds since rollout")
        ax.set_ylabel("devices on the new version")
        ax.set_title("5 % canary, then all")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--agent":
        agent_child(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--swap-client":
        swap_client(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repo", default="model-repo", type=Path)
    parser.add_argument("--only", choices=["deltas", "swap", "fleet"], action="append")
    parser.add_argument("--swaps", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--quiet-s", type=float, default=5.0)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument("--quick", action="store_true",
                        help="20 swaps after 3 s, 5 agents: a smoke run")  # fmt: skip
    args = parse_bench_args(parser)
    if args.quick:
        args.swaps, args.quiet_s, args.agents = 20, 3.0, 5
    from edgecloud.zoo import build_zoo

    repo = ModelRepository(args.repo)
    build_zoo(repo, [MODEL, "minilm"])
    only = args.only or ["deltas", "swap", "fleet"]
    out_path = results_dir() / "fleet_update.json"
    results: dict[str, Any] = (
        json.loads(out_path.read_text()) if out_path.is_file() and args.only else {}
    )
    results["machine"] = machine()
    results["quick"] = bool(args.quick)
    sections = {
        "deltas": lambda: section_deltas(repo),
        "swap": lambda: section_swap(repo, args.swaps, args.rate, args.quiet_s),
        "fleet": lambda: section_fleet(repo, args.agents, args.timeout_s),
    }
    for name in only:
        results[name] = run_section(name, sections[name])
    if "delta_ratio" in results.get("deltas", {}):
        results["delta_ratio"] = results["deltas"]["delta_ratio"]
    write_result("fleet_update", results)
    console.print(table(results))
    figure(results, results_dir() / "fleet_update.png")
    console.print(f"wrote {out_path} and {results_dir() / 'fleet_update.png'}")


if __name__ == "__main__":
    main()
