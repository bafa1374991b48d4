"""``edgecloud split MODEL`` as a function: find the cuts worth having, write them, profile them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.progress import Progress

from ..errors import ConfigError
from ..repository import ModelRepository, ModelVersion
from .artifacts import SplitPair, all_or_nothing, write_split
from .codec import check_codec, wire_bytes
from .partition import CutPoint, cut_points, find_cut
from .profile import (
    LocalTailTimer,
    SplitProfile,
    TailTimer,
    activations,
    candidate_cuts,
    profile_split,
)

__all__ = ["SplitResult", "sample_inputs", "split_model", "write_splits"]

Arrays = dict[str, np.ndarray[Any, Any]]


@dataclass(frozen=True, slots=True)
class SplitResult:
    parent: ModelVersion
    pairs: list[SplitPair]
    profile: SplitProfile
    cuts_considered: int


FIDELITY_ROWS = 32
"""Rows a split's fidelity is checked on (when the data has them): the cosine of
``tail(head(x))`` to the model over one row says little about the next."""


def sample_inputs(
    entry: ModelVersion, batch: int = 1, data: str | os.PathLike[str] | None = None
) -> Arrays:
    """Representative inputs of ``entry``: the first ``batch`` rows of ``data``
    (``--data FILE.npz``), else of the version's ``samples.npz`` (all of it for a
    model without a batch dimension, whose inputs may be scalars).

    The cuts worth having, the head/tail timings and the fidelity of every split
    (the cosine of ``tail(head(x))`` to the model) are all measured on these
    inputs, so they must be real ones: random inputs miss a model's value
    domains (token ids, masks) and lengths. ConfigError naming ``--data`` when
    there are none (:func:`edgecloud.samples.data_for`).
    """
    return _split_inputs(entry, data, batch)[0]


def _split_inputs(
    entry: ModelVersion, data: str | os.PathLike[str] | None, batch: int = 1
) -> tuple[Arrays, Arrays]:
    """(first ``batch`` rows: what is timed, first :data:`FIDELITY_ROWS` rows: what
    fidelity is checked on), from one read of the data."""
    from ..samples import data_for, finite, row_batches

    samples = finite(data_for(entry, data, purpose="split"), "split")
    timed = row_batches(samples, entry.config, batch, limit=1)[0]
    checked = row_batches(samples, entry.config, max(batch, FIDELITY_ROWS), limit=1)[0]
    return timed, checked


def choose_cuts(
    parent: ModelVersion, codec: str, inputs: Arrays, names: Sequence[str] | None = None
) -> tuple[list[CutPoint], int]:
    """The named cuts, or those that can win (fewer bytes than the input and every earlier one)."""
    cuts = cut_points(parent.model_path)
    if names:
        by_name = {cut.name: cut for cut in cuts}
        return [by_name.get(n) or find_cut(parent.model_path, n) for n in names], len(cuts)
    crossing = activations(parent.model_path, cuts, inputs)
    wire = {name: wire_bytes(check_codec(codec), arrays) for name, arrays in crossing.items()}
    return candidate_cuts(cuts, wire, wire_bytes("fp32", inputs)), len(cuts)


def write_splits(
    repo: ModelRepository,
    parent: ModelVersion,
    codecs: Sequence[str],
    sample: Arrays,
    cuts: Sequence[str] | None = None,
    checked: Arrays | None = None,
) -> tuple[list[SplitPair], int]:
    """Write (or reuse) head and tail versions for every codec; also how many cuts exist.

    Cuts are chosen on ``sample`` (activation bytes per request); every split is
    verified against the parent on ``checked`` (default: ``sample``).

    All or nothing: if any split is refused or fails to write, the splits this
    call added are removed again (see :func:`all_or_nothing`).
    """
    if not codecs:
        raise ConfigError("give at least one activation codec")
    for codec in codecs:
        check_codec(codec)  # every mistake before anything is written
    pairs: list[SplitPair] = []
    considered = 0
    with all_or_nothing(repo, parent.name):
        for codec in codecs:
            chosen, considered = choose_cuts(parent, codec, sample, cuts)
            verify_on = sample if checked is None else checked
            pairs += [write_split(repo, parent, cut, codec, verify_on) for cut in chosen]
    return pairs, considered


def split_model(
    repo: ModelRepository,
    model: str,
    *,
    version: int | str | None = None,
    codecs: Sequence[str] = ("fp32",),
    cuts: Sequence[str] | None = None,
    inputs: Arrays | None = None,
    data: str | os.PathLike[str] | None = None,
    tail_timer: TailTimer | None = None,
    device_threads: int = 1,
    repeats: int = 5,
    progress: Progress | None = None,
) -> SplitResult:
    """Write the head/tail versions of the cuts worth having and measure every option.

    Without ``tail_timer`` the tail runs on this machine with all its threads,
    as if this machine were the server; pass a :class:`RemoteTailTimer` or a
    :class:`ProfileTailTimer` for the real server's figures. The model runs on
    ``inputs`` when given, else on the first row of ``data`` (an ``.npz`` file)
    or of the version's samples (:func:`sample_inputs`), and every split's
    fidelity is checked on their first :data:`FIDELITY_ROWS` rows.
    """
    # The newest served version by default; any version on disk (sha256 checked) by number.
    parent = repo.get(model, version, served_only=version in (None, "", "latest"))
    if inputs is not None and data is not None:
        raise ConfigError("give the inputs or a data file to split on, not both")
    sample, checked = (inputs, inputs) if inputs is not None else _split_inputs(parent, data)
    with all_or_nothing(repo, parent.name):  # a split that cannot be profiled is not kept
        pairs, considered = write_splits(repo, parent, codecs, sample, cuts, checked)
        timer = tail_timer or LocalTailTimer(repo, repeats=repeats)
        profile = profile_split(
            parent,
            pairs,
            sample,
            timer,
            repository=repo,
            device_threads=device_threads,
            repeats=repeats,
            progress=progress,
            fidelity_inputs=checked,
        )
    return SplitResult(parent, pairs, profile, considered)
