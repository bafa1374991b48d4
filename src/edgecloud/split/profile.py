"""Measuring each way to split: head time on this device, tail time on the server, bytes.

Head times are measured here, through :class:`LocalBackend` with the device's
thread count. Tail times come from a :class:`TailTimer`:

- :class:`RemoteTailTimer` asks the real server (round trip minus a ping, so
  measure from close to the server or on a fast link);
- :class:`LocalTailTimer` runs the tail here with onnxruntime (what
  ``--profile-out`` records when run on the server machine);
- :class:`ProfileTailTimer` reads such a recorded profile file.

Only cuts that can win are profiled: a cut is a candidate when it sends fewer
bytes than the input and than every earlier candidate (a later cut that sends
more does more work on the slower device *and* sends more).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.progress import Progress

from .._optional import require
from .._timing import time_calls
from ..backends.base import Backend
from ..backends.local import LocalBackend
from ..errors import ConfigError, EdgecloudError, InvalidRequestError, describe
from ..repository import ModelRepository, ModelVersion
from ..tensors import InferRequest
from .artifacts import SplitPair, fidelity, tail_name
from .codec import encode
from .partition import CutPoint
from .partition import _load as load_inferred
from .planner import ALL_LOCAL, ALL_REMOTE, CutProfile, SplitPlanner

__all__ = [
    "LocalTailTimer",
    "ProfileTailTimer",
    "RemoteTailTimer",
    "SplitProfile",
    "TailTimer",
    "activations",
    "candidate_cuts",
    "default_profile_path",
    "profile_split",
]

Arrays = dict[str, np.ndarray[Any, Any]]
PROFILE_FILE = "split-profile.json"


def _median_seconds(call: Callable[[], object], repeats: int) -> float:
    return statistics.median(time_calls(call, repeats))


class TailTimer(Protocol):
    """Seconds the server needs for ``model`` on ``feed`` (compute only, no network)."""

    source: str

    def __call__(self, model: str, feed: Arrays, version: int | None = None) -> float: ...


class LocalTailTimer:
    """Run the tail on this machine: for recording a server profile on the server itself."""

    def __init__(
        self, repo: ModelRepository, *, threads: int | None = None, repeats: int = 5
    ) -> None:
        self.backend = LocalBackend(repo, intra_op_threads=threads)
        self.repo = repo
        self.threads = threads
        self.repeats = repeats
        self.source = f"measured here ({threads or 'all'} threads, onnxruntime CPU)"

    def __call__(self, model: str, feed: Arrays, version: int | None = None) -> float:
        run = _runner(self.backend, self.repo, model, version, feed, self.threads)
        return _median_seconds(run, self.repeats)


class RemoteTailTimer:
    """Time the tail through the real server: median round trip minus median ping."""

    def __init__(self, remote: Any, *, repeats: int = 5) -> None:
        self.remote = remote
        self.repeats = repeats
        self.source = f"measured through {getattr(remote, 'url', remote)}"

    def __call__(self, model: str, feed: Arrays, version: int | None = None) -> float:
        request = InferRequest(model, feed, version=None if version is None else str(version))
        total = _median_seconds(lambda: self.remote.infer(request), self.repeats)
        pings = [self.remote.ping() for _ in range(self.repeats)]
        rtt = float(statistics.median([p for p in pings if p is not None] or [0.0]))
        return max(total - rtt, 0.0)


class ProfileTailTimer:
    """Tail times recorded in a profile file (``edgecloud split --profile-out`` on the server)."""

    def __init__(self, profile: SplitProfile) -> None:
        self.times = {
            profile.remote_model(c): c.tail_s for c in profile.candidates if c.name != ALL_LOCAL
        }
        self.source = f"profile {profile.path or ''} ({profile.tail_source})".strip()

    def __call__(self, model: str, feed: Arrays, version: int | None = None) -> float:
        if model not in self.times:
            raise ConfigError(
                f"the server profile has no time for {model!r}; record it with "
                "`edgecloud split --profile-out` using the same cuts and codecs"
            )
        return float(self.times[model])


@dataclass
class SplitProfile:
    """Every candidate split of one model version, measured: what the planner plans with."""

    model: str
    version: int
    device_threads: int
    tail_source: str
    candidates: list[CutProfile]
    tensors: dict[str, list[str]] = field(default_factory=dict)
    """Cut name -> the tensors that cross it (what the head hands the tail)."""
    raw_inputs_of_tail: dict[str, list[str]] = field(default_factory=dict)
    """Cut name -> the model inputs among those tensors: raw data the tail receives as is
    (what a privacy rule on an input must look at; empty lists when none)."""
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path: Path | None = field(default=None, compare=False)

    def remote_model(self, candidate: CutProfile) -> str:
        """The server model that answers this candidate (the parent for all-remote)."""
        if candidate.name == ALL_REMOTE:
            return self.model
        return tail_name(self.model, candidate.name, candidate.codec)

    def candidate(self, key: str) -> CutProfile:
        for c in self.candidates:
            if c.key == key:
                return c
        keys = ", ".join(c.key for c in self.candidates)
        raise ConfigError(f"no split {key!r} in the profile of {self.model}; candidates: {keys}")

    def planner(self, **options: Any) -> SplitPlanner:
        return SplitPlanner(self.candidates, **options)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the profile as JSON (strict: a cosine that is not finite, from a
        split whose outputs held NaN/Inf, is written as null and read back as NaN)."""
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        for candidate in data["candidates"]:
            if not math.isfinite(candidate["cosine"]):
                candidate["cosine"] = None
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
            os.replace(tmp, target)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the split profile to {target}: {describe(exc)}"
            ) from exc
        self.path = target
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SplitProfile:
        source = Path(path)
        try:
            data = json.loads(source.read_text())
            candidates = [CutProfile(**_cosine_from_json(c)) for c in data.pop("candidates")]
            return cls(**data, candidates=candidates, path=source)
        except FileNotFoundError:
            raise ConfigError(
                f"no split profile at {source}; run `edgecloud split` first"
            ) from None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"split profile {source} is not valid: {describe(exc)}") from exc


def default_profile_path(repo: ModelRepository, model: str) -> Path:
    return repo.root / model / PROFILE_FILE


def activations(model_path: Path, cuts: Sequence[CutPoint], inputs: Arrays) -> dict[str, Arrays]:
    """The tensors crossing each cut for ``inputs``, from one run of the full model."""
    onnx = require("onnx", extra="compress", feature="model partitioning")
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(load_inferred(model_path))  # the cached one is shared: never change it
    typed = {v.name: v for v in [*model.graph.value_info, *model.graph.output]}
    wanted = sorted({t for c in cuts for t in c.tensors if t not in inputs})
    present = {o.name for o in model.graph.output}
    for name in wanted:
        if name in typed and name not in present:
            model.graph.output.append(typed[name])
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        values = {**inputs, **dict(zip(names, session.run(None, inputs), strict=True))}
    except Exception as exc:  # onnxruntime's exception types are not exported
        raise InvalidRequestError(
            f"{model_path.parent.parent.name} does not run on the sample inputs "
            f"({sorted(inputs)}), so its cuts cannot be measured: {describe(exc)}"
        ) from exc
    return {
        c.name: {t: values[t] for t in c.tensors}
        for c in cuts
        if all(t in values for t in c.tensors)
    }


def candidate_cuts(
    cuts: Sequence[CutPoint], sizes: dict[str, int], input_bytes: int
) -> list[CutPoint]:
    """Cuts that send fewer bytes than the input and than every earlier candidate."""
    best, kept = input_bytes, []
    for cut in cuts:
        size = sizes.get(cut.name)
        if size is not None and size < best:
            kept.append(cut)
            best = size
    return kept


def profile_split(
    parent: ModelVersion,
    pairs: Sequence[SplitPair],
    inputs: Arrays,
    tail_timer: TailTimer,
    *,
    repository: ModelRepository,
    device_threads: int = 1,
    device: Backend | None = None,
    repeats: int = 5,
    progress: Progress | None = None,
    fidelity_inputs: Arrays | None = None,
) -> SplitProfile:
    """Measure all-local, all-remote and every written split on ``inputs``;
    each split's fidelity on ``fidelity_inputs`` (default: ``inputs``; more rows
    than one request make the cosine worth more).

    Head times come from ``device`` (default: a LocalBackend on ``repository``
    with ``device_threads``): pass the backend the SplitBackend will use.
    """
    owned = device is None
    device = device or LocalBackend(repository, intra_op_threads=device_threads)
    task = progress.add_task("profiling splits", total=len(pairs) + 1) if progress else None
    try:
        run_parent = _runner(
            device, repository, parent.name, parent.version, inputs, device_threads
        )
        local_s = _median_seconds(run_parent, repeats)
        outputs = run_parent()
        down = sum(int(o.nbytes) for o in outputs.values())
        up = sum(int(a.nbytes) for a in inputs.values())
        candidates = [
            CutProfile(ALL_LOCAL, local_s, 0.0, 0, 0),
            CutProfile(
                ALL_REMOTE, 0.0, _tail(tail_timer, parent.name, inputs, parent.version), up, down
            ),
        ]
        if progress is not None and task is not None:
            progress.advance(task)
        for pair in pairs:
            run_head = _runner(
                device, repository, pair.head.name, pair.head.version, inputs, device_threads
            )
            head_s = _median_seconds(run_head, repeats)
            middle = {**inputs, **run_head()}
            feed = encode(pair.codec, {t: middle[t] for t in pair.cut.tensors})
            sent = sum(int(v.nbytes) for v in feed.values())
            tail_s = _tail(tail_timer, pair.tail.name, feed, pair.tail.version)
            cosine = fidelity(parent, pair, inputs if fidelity_inputs is None else fidelity_inputs)
            candidates.append(
                CutProfile(pair.cut.name, head_s, tail_s, sent, down, pair.codec, cosine)
            )
            if progress is not None and task is not None:
                progress.advance(task)
    finally:
        if owned:
            device.close()
    tensors = {pair.cut.name: list(pair.cut.tensors) for pair in pairs}
    raw = {pair.cut.name: list(pair.cut.raw_inputs) for pair in pairs}
    return SplitProfile(
        parent.name, parent.version, device_threads, tail_timer.source, candidates, tensors, raw
    )


def _runner(
    device: Backend,
    repo: ModelRepository,
    model: str,
    version: int | None,
    feed: Arrays,
    threads: int | None,
) -> Callable[[], Arrays]:
    """A call that runs ``model`` ``version`` on ``feed`` and returns its outputs.

    A served version runs through ``device``; one the version policy does not
    serve (``edgecloud split --version 1`` after ``compress`` added version 2)
    is verified against its sha256 and run directly by onnxruntime with the
    same thread count, so any intact version on disk can be profiled.
    """
    if version is None or version in repo.served_versions(model):
        request = InferRequest(model, feed, version=None if version is None else str(version))
        return lambda: device.infer(request).outputs
    import onnxruntime as ort

    entry = repo.get(model, version, served_only=False)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(
            str(entry.model_path), options, providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        wanted = {i.name for i in session.get_inputs()}
    except Exception as exc:  # onnxruntime's exception types are not exported
        raise InvalidRequestError(
            f"{model} version {version} does not load: {describe(exc)}"
        ) from exc
    ordered = {k: v for k, v in feed.items() if k in wanted}
    return lambda: dict(zip(names, session.run(None, ordered), strict=True))


def _tail(timer: TailTimer, model: str, feed: Arrays, version: int | None = None) -> float:
    try:
        return timer(model, feed, version)
    except EdgecloudError as exc:
        raise type(exc)(f"timing the tail {model!r} failed: {exc.message}") from exc


def _cosine_from_json(candidate: dict[str, Any]) -> dict[str, Any]:
    """A saved candidate with its null cosine (not finite when measured) as NaN."""
    if "cosine" in candidate and candidate["cosine"] is None:
        return {**candidate, "cosine": math.nan}
    return candidate
