"""SplitBackend: the head on this device, the activation over the link, the tail on the server.

The tail is an ordinary model on the server (``<model>.tail.<cut>``), so any
Open Inference Protocol server hosts it. Each request is planned with the
live link estimate: RTT from pings, bandwidth from the backend's own
transfers (round trip minus RTT minus the profiled tail time). While the plan
is all-local no transfer is observed, so a small ``explore`` share of
requests takes the best remote candidate to keep the estimate current.

Privacy: a request that may not leave the device runs all-local. A request
whose context is ``features_only`` (a Guard rule ``features``) never sends
its raw input (all-remote is excluded) but may send the activation of a cut.

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
        """The split for this request, and why."""
        context = request.context
        if not context.features_may_leave:
            local = self.profile.candidate(ALL_LOCAL)
            return local, "data may not leave the device"
        if self.fixed is not None:
            return self.fixed, "fixed split"
        link = self.tracker.link()
        with self._lock:
            choice = self.planner.plan(link)
        raw_stays = context.features_only
        exploring = choice.name == ALL_LOCAL and self._rng.random() < self.explore
        if (raw_stays and choice.name == ALL_REMOTE) or exploring:
            allowed = [p for _, p in self.planner.rank(link)
                       if not (raw_stays and p.name == ALL_REMOTE)]  # fmt: skip
            if exploring:
                remote = next((p for p in allowed if p.name != ALL_LOCAL), None)
                if remote is not None:
                    return remote, "exploring: keeps the link estimate current"
            choice = allowed[0]
        unit = "J" if self.planner.objective == "energy" else "s"
        cost = self.planner.cost(choice, link)
        why = (f"{link.bandwidth_bps / 1e6:.3g} Mbit/s, RTT {link.rtt_s * 1e3:.3g} ms → "
               f"{choice.key} (expected {cost:.3g} {unit})")  # fmt: skip
        return choice, why

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
        middle: Arrays = {**request.inputs, **head.outputs}
        tensors = _cut_tensors(self.profile, choice, middle)
        return self._remote(
            request, encode(check_codec(choice.codec), tensors), decision, [head_span], choice
        )

    def _remote(
        self,
        request: InferRequest,
        tensors: Arrays,
        decision: Span,
        spans: list[Span],
        choice: CutProfile,
    ) -> InferResponse:
        context = request.context
        if context.features_only and choice.name != ALL_REMOTE:
            context = replace(context, features_only=False)  # features, not the raw input
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


def _cut_tensors(profile: SplitProfile, choice: CutProfile, middle: Arrays) -> Arrays:
    names = profile.tensors.get(choice.name)
    if names is None:
        raise ConfigError(
            f"the profile of {profile.model} does not record the tensors of {choice.name}"
        )
    return {name: middle[name] for name in names}


def _traced(response: InferResponse, served_by: str, before: list[Span]) -> InferResponse:
    response.trace = Trace(served_by, [*before, *response.trace.spans])
    return response
