"""SplitBackend: the head on this device, the activation over the link, the tail on the server.

The tail is an ordinary model on the server (``<model>.tail.<cut>``), so any
Open Inference Protocol server hosts it. Each request is planned with the
live link estimate: RTT from pings, bandwidth from the backend's own
transfers (round trip minus RTT minus the profiled tail time). While the plan
is all-local no transfer is observed, so a small ``explore`` share of
requests takes the best remote candidate to keep the estimate current.

Privacy: a request that may not leave the device runs all-local. A request
whose context is ``features_only`` (a Guard rule ``features``) never sends a
raw input: all-remote is excluded, and so is every cut whose tail consumes a
graph input directly (e.g. a second input only the tail reads) or a tensor the
head only copied from one (a Reshape or Cast of it: the profile's
``raw_inputs_of_tail``, see ``partition.FEATURE_OPS``) — the rule is
:func:`edgecloud.routing.privacy.withheld`, the same one the transport
enforces. The tail request names the tensors computed on the device in its
context (``features``), so the transport can tell activations from raw data.

Wrap it in a Fallback to a local path to keep answering when the server is
unreachable; the split backend itself raises the remote's error. A server
that answers 404 for a tail (not deployed there) takes that split out of
the plan, with a warning, and the request is planned again.
"""

from __future__ import annotations

import logging
import random
import statistics
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Any

import numpy as np

from ..backends.base import Backend
from ..errors import ConfigError, ModelNotFoundError
from ..routing.privacy import withheld
from ..tensors import InferRequest, InferResponse, Span, Trace
from .artifacts import head_name
from .codec import check_codec, encode
from .planner import ALL_LOCAL, ALL_REMOTE, CutProfile, Link, Objective, PowerModel
from .profile import SplitProfile

__all__ = ["LinkTracker", "SplitBackend"]

Arrays = dict[str, np.ndarray[Any, Any]]
log = logging.getLogger(__name__)


class LinkTracker:
    """RTT and bandwidth of one link, from pings and from the transfers themselves.

    ``initial`` answers until the first measurement of each quantity; then the
    median of the last ``window`` measurements does.
    """

    MIN_BYTES = 32_000
    """Smaller transfers are dominated by RTT and say nothing about bandwidth."""

    def __init__(self, initial: Link, *, window: int = 8) -> None:
        self.initial = initial
        self._rtts: deque[float] = deque(maxlen=window)
        self._bandwidths: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def record_rtt(self, seconds: float) -> None:
        with self._lock:
            self._rtts.append(max(seconds, 0.0))

    def record_transfer(self, nbytes: int, network_seconds: float) -> None:
        """A transfer of ``nbytes`` whose network part (RTT included) took this long."""
        with self._lock:
            rtt = statistics.median(self._rtts) if self._rtts else self.initial.rtt_s
            wire = network_seconds - rtt
            if nbytes < self.MIN_BYTES or wire <= 0.05 * network_seconds:
                return  # too small to say anything about bandwidth
            self._bandwidths.append(nbytes * 8 / wire)

    def link(self) -> Link:
        with self._lock:
            rtt = statistics.median(self._rtts) if self._rtts else self.initial.rtt_s
            bandwidth = (
                statistics.median(self._bandwidths)
                if self._bandwidths
                else self.initial.bandwidth_bps
            )
        return Link(rtt, bandwidth)


class SplitBackend(Backend):
    """Answer ``profile.model`` by the split that is cheapest on the link right now.

    >>> profile = SplitProfile.load("model-repo/resnet18-like/split-profile.json")  # doctest: +SKIP
    >>> split = SplitBackend(LocalBackend("model-repo", intra_op_threads=1),
    ...                      RemoteBackend("http://server:8000"), profile)  # doctest: +SKIP
    >>> split.infer(InferRequest("resnet18-like", {"image": x})).trace.served_by  # doctest: +SKIP
    'split:cut28/int8'
    """

    def __init__(
        self,
        device: Backend,
        remote: Backend,
        profile: SplitProfile,
        *,
        link: Link | None = None,
        objective: Objective = "latency",
        power: PowerModel | None = None,
        min_cosine: float = 0.99,
        hysteresis: float = 0.2,
        explore: float = 0.02,
        fixed: str | None = None,
        seed: int | None = None,
    ) -> None:
        if not 0 <= explore <= 1:
            raise ConfigError("explore must be within [0, 1]")
        for candidate in profile.candidates:
            check_codec(candidate.codec)
        self.device = device
        self.remote = remote
        self.profile = profile
        self.model = profile.model
        self._version = str(profile.version)
        """Head, tail and parent all carry the profiled parent's version number."""
        self.name = f"split:{self.model}"
        self.planner = profile.planner(
            objective=objective, power=power, min_cosine=min_cosine, hysteresis=hysteresis
        )
        self.fixed = profile.candidate(fixed) if fixed is not None else None
        self.tracker = LinkTracker(link or Link(rtt_s=0.05, bandwidth_bps=10e6))
        self.explore = explore
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        if link is None:
            self.probe()

    def probe(self, sample: InferRequest | None = None) -> Link:
        """Ping the server (RTT) and, given a sample request, send it whole (bandwidth).

        The sample is a real all-remote inference whose answer is dropped: use
        it when the link may have changed while every request stayed local.
        """
        ping = getattr(self.remote, "ping", None)
        seconds = ping() if callable(ping) else None
        if seconds is not None:
            self.tracker.record_rtt(seconds)
        if sample is not None:
            remote = self.profile.candidate(ALL_REMOTE)
            decision = Span(self.name, "decision", 0.0, "probe")
            self._remote(sample, dict(sample.inputs), decision, [], remote)
        return self.tracker.link()

    def choose(self, request: InferRequest) -> tuple[CutProfile, str]:
        """The split for this request, and why.

        Only splits whose tail request the privacy rule lets leave are
        planned (:meth:`eligible`): under ``features_only`` a cut whose tail
        consumes a raw graph input directly is ruled out like all-remote.
        """
        local = self.profile.candidate(ALL_LOCAL)
        if not request.context.features_may_leave:
            return local, "data may not leave the device"
        if any(v.ndim and v.shape[0] == 0 for v in request.inputs.values()):
            return local, "an empty batch (0 rows): the device answers it without a run"
        if self.fixed is not None:
            kept = self._withheld(self.fixed, request)
            if kept:
                return local, f"fixed split {self.fixed.key} would send raw {', '.join(kept)}"
            return self.fixed, "fixed split"
        link = self.tracker.link()
        with self._lock:
            choice = self.planner.plan(link)
            ranked = [p for _, p in self.planner.rank(link)]
        allowed = [p for p in ranked if not self._withheld(p, request)]
        exploring = choice.name == ALL_LOCAL and self._rng.random() < self.explore
        if exploring:
            remote = next((p for p in allowed if p.name != ALL_LOCAL), None)
            if remote is not None:
                return remote, "exploring: keeps the link estimate current"
        if choice not in allowed:
            choice = allowed[0] if allowed else local
        unit = "J" if self.planner.objective == "energy" else "s"
        cost = self.planner.cost(choice, link)
        why = (f"{link.bandwidth_bps / 1e6:.3g} Mbit/s, RTT {link.rtt_s * 1e3:.3g} ms → "
               f"{choice.key} (expected {cost:.3g} {unit})")  # fmt: skip
        if len(allowed) < len(ranked):
            why += f"; {len(ranked) - len(allowed)} splits would send raw input"
        return choice, why

    def eligible(self, choice: CutProfile, request: InferRequest) -> bool:
        """Whether ``choice``'s tail request may leave the device under this request's rules."""
        return not self._withheld(choice, request)

    def _withheld(self, choice: CutProfile, request: InferRequest) -> list[str]:
        try:
            raw, features = self._crossing(choice, request)
        except ConfigError:  # the profile does not say what crosses: assume raw input does
            raw, features = list(request.inputs), []
        context = replace(request.context, features=frozenset(features))
        return withheld(context, [*raw, *features])

    def _crossing(self, choice: CutProfile, request: InferRequest) -> tuple[list[str], list[str]]:
        """(raw data, device-computed features) that ``choice`` sends the server, by name.

        Raw: the request's inputs among the crossing tensors, and the tensors
        the profile records as copies of raw inputs (``raw_inputs_of_tail``).
        """
        if choice.name == ALL_LOCAL:
            return [], []
        if choice.name == ALL_REMOTE:
            return list(request.inputs), []
        names = _cut_names(self.profile, choice)
        copies = set(self.profile.raw_inputs_of_tail.get(choice.name, ()))
        raw = [n for n in names if n in request.inputs or n in copies]
        return raw, [n for n in names if n not in raw]

    def infer(self, request: InferRequest) -> InferResponse:
        if request.model != self.model:
            raise ModelNotFoundError(
                f"this split backend serves {self.model!r}, not {request.model!r}"
            )
        if request.version not in (None, "", "latest", self._version):
            raise ModelNotFoundError(
                f"the split profile is for {self.model!r} version {self._version}, not "
                f"{request.version}; run `edgecloud split {self.model} --version "
                f"{request.version}` for that one"
            )
        request = replace(request, version=self._version)
        choice, why = self.choose(request)
        try:
            return self._run(request, choice, why)
        except ModelNotFoundError as exc:
            if choice.name == ALL_LOCAL or self.fixed is not None:
                raise
            # The server does not have this tail (or the model): plan without it from now on.
            log.warning("%s: %s; %s is no longer planned", self.name, exc.message, choice.key)
            with self._lock:
                if choice in self.planner.profiles:
                    self.planner.exclude(choice)
            return self.infer(request)

    def _run(self, request: InferRequest, choice: CutProfile, why: str) -> InferResponse:
        decision = Span(self.name, "decision", 0.0, why)
        if choice.name == ALL_LOCAL:
            response = self.device.infer(request)
            return _traced(response, f"split:{ALL_LOCAL}", [decision])
        if choice.name == ALL_REMOTE:
            return self._remote(request, dict(request.inputs), decision, [], choice)
        started = time.perf_counter()
        head = self.device.infer(
            InferRequest(
                head_name(self.model, choice.name),
                request.inputs,
                version=self._version,
                context=request.context,
            )
        )
        head_span = Span(f"device:{head_name(self.model, choice.name)}", "compute",
                         time.perf_counter() - started, f"head up to {choice.name}")  # fmt: skip
        codec = check_codec(choice.codec)
        raw, computed = self._crossing(choice, request)
        features = encode(codec, {name: head.outputs[name] for name in computed})
        sent_raw = {n: request.inputs[n] if n in request.inputs else head.outputs[n] for n in raw}
        tensors = {**encode(codec, sent_raw), **features}
        return self._remote(request, tensors, decision, [head_span], choice, set(features))

    def _remote(
        self,
        request: InferRequest,
        tensors: Arrays,
        decision: Span,
        spans: list[Span],
        choice: CutProfile,
        features: set[str] | None = None,
    ) -> InferResponse:
        """Send ``tensors`` to ``choice``'s model on the server.

        ``features`` names the tensors computed on the device; the request
        carries them in its context so the transport tells them from raw
        inputs (a raw input is never declared a feature, so a ``features_only``
        request that would carry one is refused where it leaves).
        """
        context = replace(request.context, features=frozenset(features or ()))
        outgoing = replace(
            request, model=self.profile.remote_model(choice), inputs=tensors,
            version=self._version, context=context,
        )  # fmt: skip
        started = time.perf_counter()
        response = self.remote.infer(outgoing)
        elapsed = time.perf_counter() - started
        nbytes = sum(int(a.nbytes) for a in [*tensors.values(), *response.outputs.values()])
        self.tracker.record_transfer(nbytes, elapsed - choice.tail_s)
        response.model = self.model
        return _traced(response, f"split:{choice.key}", [decision, *spans])

    def close(self) -> None:
        self.device.close()
        self.remote.close()


def _cut_names(profile: SplitProfile, choice: CutProfile) -> list[str]:
    names = profile.tensors.get(choice.name)
    if names is None:
        raise ConfigError(
            f"the profile of {profile.model} does not record the tensors of {choice.name}"
        )
    return list(names)


def _traced(response: InferResponse, served_by: str, before: list[Span]) -> InferResponse:
    response.trace = Trace(served_by, [*before, *response.trace.spans])
    return response
