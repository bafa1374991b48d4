"""Row independence: a batched model must answer each row as if it were alone.

A model published with ``max_batch_size > 0`` is served with dynamic
batching: rows of different clients are stacked into one call. If a row's
answer depends on the other rows of its batch (a mean or a sort over axis 0,
BatchNorm or dropout in training mode, random ops) one client's answer then
depends on, and leaks, another client's inputs. Parity checks (ONNX against
torch on the same batch) cannot see this; :func:`check_row_independence` runs
the model on batches of 2, 8 and ``max_batch_size`` (at most :data:`ROWS`) rows,
on each row alone and on the rows shuffled, and refuses it when the answers
differ beyond rounding. Every path that publishes a batched model calls it:
``edgecloud import --max-batch-size N``
(hence :func:`edgecloud.export.from_torch`) and ``compress -m prune/distill``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError

if TYPE_CHECKING:
    from .repository import ModelConfig, ModelVersion

__all__ = [
    "ATOL",
    "ROWS",
    "RTOL",
    "UNBATCHED",
    "batch_sizes",
    "check_row_independence",
    "check_rows",
    "check_version",
    "row_difference",
]

Arrays = Mapping[str, np.ndarray[Any, Any]]
Run = Callable[[dict[str, np.ndarray[Any, Any]]], Mapping[str, Any]]

ROWS = 64
"""The most rows checked: batches of 2, 8 and ``min(max_batch_size, ROWS)`` rows are
compared with each row alone (about ROWS + 5 calls: milliseconds for a small model). A
model may mix rows only above some batch size (a branch on the batch size), so the check
reaches the batch sizes the server forms, up to this bound."""

ROWS_SEED = 1729
"""Seed of the random rows :func:`check_rows` adds."""

BATCHES = (2, 8)
"""Batch sizes always compared (when there are that many rows), besides the largest."""

RTOL = 1e-3
ATOL = 1e-4
"""A row may differ between a batch and alone by ``ATOL + RTOL * |batched|``: batched and
single-row float32 kernels of onnxruntime differ by rounding (~1e-6 relative); mixing
rows changes answers by the size of the data."""


def batch_sizes(n: int) -> list[int]:
    """The batch sizes compared for ``n`` rows: :data:`BATCHES` below ``n``, and ``n``."""
    return sorted({b for b in BATCHES if b < n} | ({n} if n >= 2 else set()))


def row_difference(run: Run, inputs: Arrays, rows: int = ROWS) -> tuple[float, str] | None:
    """The largest difference between a batch's answers and the same rows run alone or
    shuffled, with where it was seen; None when every row agrees (or there are < 2 rows).

    Batches of every size in :func:`batch_sizes` (the first rows of ``inputs``, up to
    ``rows``) are compared with the rows alone; the largest is also run twice and reversed.
    ``run`` maps ``{input: [rows, ...]}`` to ``{output: [rows, ...]}``; outputs whose
    leading dimension is not the batch (a whole-run output) are not compared. NaN
    equals NaN. Raises ConfigError when two runs of the same batch differ
    (non-deterministic: random ops, dropout in training mode).
    """
    n = min(rows, *(len(v) for v in inputs.values())) if inputs else 0
    if n < 2:
        return None
    batch = {k: np.ascontiguousarray(v[:n]) for k, v in inputs.items()}
    first = _per_row(run(batch), n)
    again = _worst(first, _per_row(run(batch), n))
    if again is not None:
        raise ConfigError(
            f"the model gives different answers to the same {n} rows on two runs (up to "
            f"{again:.3g}): it is not deterministic (random ops, or dropout in training mode: "
            "export it in eval() mode), so it cannot be served batched; import it with "
            "--max-batch-size 0 or remove the randomness"
        )
    alone = [_per_row(run({k: v[i : i + 1] for k, v in batch.items()}), 1) for i in range(n)]
    worst: tuple[float, str] | None = None
    for size in batch_sizes(n):
        batched = first
        if size < n:  # the outputs that are per row in the largest batch (a whole-run
            # output may happen to have `size` entries)
            smaller = _per_row(run({k: v[:size] for k, v in batch.items()}), size)
            batched = {k: smaller.get(k, np.empty((0,))) for k in first}
        for i in range(size):
            diff = _worst({k: v[i : i + 1] for k, v in batched.items()}, alone[i])
            if diff is not None and (worst is None or diff > worst[0]):
                worst = (diff, f"row {i} alone vs in a batch of {size}")
    order = np.arange(n)[::-1].copy()  # reversed: never the identity for n >= 2
    shuffled = _per_row(run({k: v[order] for k, v in batch.items()}), n)
    diff = _worst({k: v[order] for k, v in first.items()}, shuffled)
    if diff is not None and (worst is None or diff > worst[0]):
        worst = (diff, f"the same {n} rows shuffled")
    return worst


def check_rows(config: ModelConfig, inputs: Arrays | None, rows: int) -> Arrays:
    """``rows`` rows to check ``config``'s model on: the distinct rows of ``inputs`` (its
    samples) first, then seeded random rows of the declared shapes (identical rows would
    hide a mean over the batch; too few would hide a mix above some batch size)."""
    from .compress.evaluate import random_inputs

    have = _distinct_count(inputs, rows) if inputs else 0
    if have >= rows:
        assert inputs is not None
        return {k: np.ascontiguousarray(v[:rows]) for k, v in inputs.items()}
    # a seed of its own: not seed 0, which users' own random samples often share
    extra = random_inputs(config, batch=rows - have, seed=ROWS_SEED)
    if not have:
        return extra
    assert inputs is not None
    return {
        k: np.concatenate([np.asarray(inputs[k])[:have], extra[k].astype(inputs[k].dtype)])
        for k in extra
    }


UNBATCHED = "or publish it unbatched with --max-batch-size 0"
"""The other fix where the caller can publish the model unbatched (import, from_torch)."""


def check_row_independence(
    run: Run, inputs: Arrays, what: str, rows: int = ROWS, *, other_fix: str = UNBATCHED
) -> None:
    """ConfigError when ``run`` answers a row differently in a batch than alone.

    ``what`` names the model in the message ("model 'm' version 2"); ``other_fix``
    ends it (a method that needs the batch passes its own).
    """
    found = row_difference(run, inputs, rows)
    if found is None:
        return
    diff, where = found
    raise ConfigError(
        f"{what} is not row-independent: its answers change by up to {diff:.3g} ({where}; "
        f"allowed {ATOL:g} + {RTOL:g} × |value|), so batching one client's rows with "
        "another's would change (and leak) their answers; make every row's output depend on "
        "that row only (no mean, sort or normalisation over the batch axis; BatchNorm and "
        f"dropout in eval() mode) {other_fix}"
    )


def _distinct_count(inputs: Arrays, rows: int) -> int:
    """How many leading rows (at most ``rows``) are pairwise distinct (over all inputs
    together); 0 when fewer than 2 are."""
    arrays = [np.asarray(v)[:rows] for v in inputs.values()]
    if not arrays or any(a.ndim == 0 for a in arrays):
        return 0
    n = min(len(a) for a in arrays)
    seen: set[bytes] = set()
    for i in range(n):
        key = b"".join(np.ascontiguousarray(a[i]).tobytes() for a in arrays)
        if key in seen:
            break
        seen.add(key)
    return len(seen) if len(seen) >= 2 else 0


def _per_row(outputs: Mapping[str, Any], n: int) -> dict[str, np.ndarray[Any, Any]]:
    """The outputs that have one entry per row, as float64."""
    out = {}
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.ndim and array.shape[0] == n:
            out[name] = array.astype(np.float64)
    return out


def _worst(
    want: Mapping[str, np.ndarray[Any, Any]], got: Mapping[str, np.ndarray[Any, Any]]
) -> float | None:
    """Largest |got - want| where it exceeds the tolerance; None when all agree."""
    worst: float | None = None
    for name, w in want.items():
        g = got.get(name)
        if g is None or g.shape != w.shape:
            shape = None if g is None else list(g.shape)
            raise ConfigError(
                f"output {name!r} has shape {shape} for a row alone but {list(w.shape)} "
                "in a batch: the model is not row-independent; publish it with "
                "--max-batch-size 0"
            )
        same = (g == w) | (np.isnan(w) & np.isnan(g))  # inf == inf, NaN "==" NaN
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.abs(g - w))
        diff = np.where(np.isnan(diff), np.inf, diff)
        bad = diff > ATOL + RTOL * np.abs(np.nan_to_num(w, posinf=0, neginf=0))
        if bad.any():
            value = float(np.max(diff[bad]))
            worst = value if worst is None else max(worst, value)
    return worst


def check_version(version: ModelVersion, inputs: Arrays | None = None) -> None:
    """Check a batched ``version``'s ONNX graph with onnxruntime (its log kept off stderr).

    ``inputs``: its sample rows, completed by :func:`check_rows` to
    ``min(max_batch_size, ROWS)`` distinct rows. ConfigError when rows interact, or when
    the model fails on a batch smaller or larger than its examples (a batch size fixed in
    the graph).
    """
    from .export import quiet_session

    rows = min(ROWS, version.config.max_batch_size)
    if rows < 2:
        return
    inputs = check_rows(version.config, inputs, rows)
    what = f"model {version.name!r} version {version.version}"
    session = quiet_session(version.model_path)
    outputs = [spec.name for spec in version.config.outputs]

    def run(feed: dict[str, np.ndarray[Any, Any]]) -> Mapping[str, Any]:
        try:
            return dict(zip(outputs, session.run(outputs, feed), strict=True))
        except Exception as exc:  # onnxruntime's Fail / InvalidArgument are not exported
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            raise ConfigError(
                f"{what} fails on a batch of {len(next(iter(feed.values())))} row(s) "
                f"({first[:300]}); a graph that fixes its batch size cannot be served "
                "batched: publish it with --max-batch-size 0"
            ) from exc

    check_row_independence(run, inputs, what, rows)
