"""Stand-ins for the agent's tests: a signed update repository and a range-capable server.

``TinyFleet`` signs a python-tuf repository in the ngclient layout the
contract names (consistent snapshots: ``metadata/N.targets.json``,
``targets/MODEL/V/<sha256>.model.onnx``) with real ed25519 keys — the same
metadata ``edgecloud fleet publish`` writes. ``RangeServer`` serves it at
``/fleet/`` with HTTP Range (206/416), counting the bytes it sent.
After the merge, tests that only need a repository can switch to
``edgecloud.fleet.update_repo.UpdateRepository`` and ``edgecloud serve --fleet``.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from edgecloud.repository import ModelConfig
from edgecloud.tensors import TensorSpec

HIDDEN = 2048
"""Hidden width of the test classifier: ~100 KB of weights, so a download takes a while."""


def classifier_onnx(seed: int, *, permute: bool = False, nan: bool = False) -> bytes:
    """scores = relu(x @ W1) @ W2 — x: FP32 [rows, 4], scores: FP32 [rows, 3].

    Versions differ by a small fine-tune (``seed``); ``permute`` swaps the
    class columns (a model with its labels permuted); ``nan`` puts a NaN in W2.
    """
    base = np.random.default_rng(0)
    w1 = base.standard_normal((4, HIDDEN)).astype(np.float32)
    w2 = base.standard_normal((HIDDEN, 3)).astype(np.float32) / 10
    w2 += np.random.default_rng(seed).standard_normal(w2.shape).astype(np.float32) * 1e-6
    if permute:
        w2 = w2[:, [1, 2, 0]]
    if nan:
        w2[0, 0] = np.nan
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "W2"], ["scores"]),
        ],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def classifier_config(name: str = "clf") -> ModelConfig:
    return ModelConfig(
        name=name,
        max_batch_size=64,
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[4])],
        outputs=[TensorSpec(name="scores", datatype="FP32", shape=[3])],
    )


def samples_npz() -> bytes:
    """32 rows and their labels: the base model's own argmax (accuracy 1.0 for a fine-tune)."""
    x = np.random.default_rng(1).standard_normal((128, 4)).astype(np.float32)
    base = np.random.default_rng(0)
    w1 = base.standard_normal((4, HIDDEN)).astype(np.float32)
    w2 = base.standard_normal((HIDDEN, 3)).astype(np.float32) / 10
    scores = np.maximum(x @ w1, 0) @ w2
    top2 = np.sort(scores, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.1 * np.abs(top2[:, 1])  # no near-ties a fine-tune flips
    x = x[clear][:32]
    labels = scores[clear][:32].argmax(axis=1).astype(np.int64)
    out = io.BytesIO()
    np.savez(out, x=x, labels=labels)
    return out.getvalue()


class TinyFleet:
    """A python-tuf repository signed with fresh keys, one role one key, consistent snapshots."""

    def __init__(self, root: Path, *, expires_in: timedelta = timedelta(days=7)) -> None:
        self.root = root
        (root / "metadata").mkdir(parents=True)
        (root / "targets").mkdir()
        self.expires_in = expires_in
        self.signers = {
            r: CryptoSigner.generate_ed25519() for r in ("root", "targets", "snapshot", "timestamp")
        }
        meta = Root(expires=self._expiry(), consistent_snapshot=True)
        for role, signer in self.signers.items():
            meta.add_key(signer.public_key, role)
        self.root_md = Metadata(meta)
        self.root_md.sign(self.signers["root"])
        self.targets_md = Metadata(Targets(expires=self._expiry()))
        self.snapshot_md = Metadata(Snapshot(expires=self._expiry()))
        self.timestamp_md = Metadata(Timestamp(expires=self._expiry()))
        self._write("1.root.json", self.root_md)
        self._write("root.json", self.root_md)
        self.targets_md.signed.version = 0
        self.sign()

    @property
    def root_bytes(self) -> bytes:
        return (self.root / "metadata" / "1.root.json").read_bytes()

    def _expiry(self) -> datetime:
        return datetime.now(UTC).replace(microsecond=0) + self.expires_in

    def _write(self, name: str, md: Metadata[Any]) -> None:
        data = md.to_bytes(JSONSerializer(compact=True))
        tmp = self.root / "metadata" / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.root / "metadata" / name)

    def put(self, path: str, data: bytes, custom: dict[str, Any]) -> str:
        """Add target ``path`` (written as ``dir/<sha256>.<name>``); returns its sha256."""
        sha = hashlib.sha256(data).hexdigest()
        head, _, name = path.rpartition("/")
        where = self.root / "targets" / head / f"{sha}.{name}"
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_bytes(data)
        self.targets_md.signed.targets[path] = TargetFile(
            len(data), {"sha256": sha}, path, unrecognized_fields={"custom": custom}
        )
        return sha

    def sign(self) -> None:
        """Targets, snapshot and timestamp: new versions, fresh expiry, re-signed."""
        t = self.targets_md
        t.signed.version += 1
        t.signed.expires = self._expiry()
        t.signatures.clear()
        t.sign(self.signers["targets"])
        self._write(f"{t.signed.version}.targets.json", t)
        s = self.snapshot_md
        s.signed.meta["targets.json"] = MetaFile(version=t.signed.version)
        s.signed.version += 1 if t.signed.version > 1 else 0
        s.signed.expires = self._expiry()
        s.signatures.clear()
        s.sign(self.signers["snapshot"])
        self._write(f"{s.signed.version}.snapshot.json", s)
        ts = self.timestamp_md
        ts.signed.snapshot_meta = MetaFile(version=s.signed.version)
        ts.signed.version += 1 if t.signed.version > 1 else 0
        ts.signed.expires = self._expiry()
        ts.signatures.clear()
        ts.sign(self.signers["timestamp"])
        self._write("timestamp.json", ts)

    def publish(
        self,
        model: str,
        version: int,
        onnx_bytes: bytes,
        *,
        samples: bytes | None = None,
        config: ModelConfig | None = None,
        rollout: bool = True,
    ) -> str:
        """One version as the tuf part lays it out; returns the model's sha256.

        ``rollout``: also roll it out to every device (``MODEL/rollout.json``,
        candidate at 100%): publishing alone deploys nothing."""
        prefix = f"{model}/{version}"
        file_custom = {"edgecloud": {"kind": "file", "model": model, "version": version}}
        others = []
        cfg = (config or classifier_config(model)).model_dump(mode="json", exclude_defaults=True)
        self.put(f"{prefix}/config.json", json.dumps(cfg).encode(), file_custom)
        others.append(f"{prefix}/config.json")
        if samples is not None:
            self.put(f"{prefix}/samples.npz", samples, file_custom)
            others.append(f"{prefix}/samples.npz")
        custom = {
            "edgecloud": {"kind": "model", "model": model, "version": version, "files": others}
        }
        sha = self.put(f"{prefix}/model.onnx", onnx_bytes, custom)
        if rollout:
            self.roll_out(model, version)
        self.sign()
        return sha

    def roll_out(
        self,
        model: str,
        candidate: int | None,
        *,
        stable: int | None = None,
        percent: float = 100.0,
        state: str = "active",
        sign: bool = False,
    ) -> None:
        """Write ``MODEL/rollout.json`` (the rollout part's schema) as a target."""
        self._generation = getattr(self, "_generation", 0) + 1
        body = {
            "model": model, "stable": stable, "candidate": candidate, "percent": percent,
            "state": state, "generation": self._generation,
        }  # fmt: skip
        self.put(
            f"{model}/rollout.json", json.dumps(body).encode(), {"edgecloud": {"kind": "rollout"}}
        )
        if sign:
            self.sign()


class RangeServer:
    """Serves ``root`` at ``/fleet/`` over HTTP/1.1 with Range; counts bytes sent."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sent = 0
        self.events: dict[str, dict[str, Any]] = {}
        """Telemetry received at ``POST /fleet/telemetry``, by event id (stored once)."""
        self.fail_after: int | None = None
        """Cut each target body after this many bytes (an interrupted download)."""
        self.refuse: int | None = None
        """Answer every target request with this status (a server in trouble)."""
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ok = self.path == "/fleet/telemetry"
                if ok:
                    event = json.loads(body)
                    with server.lock:
                        server.events.setdefault(event["id"], event)
                self.send_response(200 if ok else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                rel = self.path.removeprefix("/fleet/")
                file = (server.root / rel).resolve()
                if (
                    not self.path.startswith("/fleet/")
                    or server.root.resolve() not in file.parents
                    or not file.is_file()
                ):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if server.refuse is not None and rel.startswith("targets/"):
                    self.send_response(server.refuse)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = file.read_bytes()
                start, status = 0, 200
                ranged = self.headers.get("Range")
                if ranged:
                    start = int(ranged.removeprefix("bytes=").split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:]
                cut = server.fail_after if rel.startswith("targets/") else None
                self.send_response(status)
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if cut is not None and cut < len(body):
                    self.wfile.write(body[:cut])
                    with server.lock:
                        server.sent += cut
                    self.close_connection = True
                    return
                self.wfile.write(body)
                with server.lock:
                    server.sent += len(body)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client killed mid-transfer (the crash test) is expected

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
