"""LocalBackend: onnxruntime sessions on this machine, one per model version."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from ..errors import (
    ConfigError,
    EdgecloudError,
    InferenceError,
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
)
from ..repository import ModelRepository, ModelVersion
from ..tensors import (
    InferRequest,
    InferResponse,
    InputValidator,
    Span,
    Trace,
    numpy_dtype,
)
from ..wire.values import utf8_error
from .base import Backend, check_rows
from .torch_runner import TORCHSCRIPT_FILE, TorchRunner, cuda_available

if TYPE_CHECKING:
    import logging
    from concurrent.futures import ThreadPoolExecutor

    from .._config_models import ModelConfig
    from .._edge_config import EdgeModelConfig
    from ..tensors import Spec

__all__ = [
    "LoadedModel",
    "LocalBackend",
    "batched_outputs",
    "default_providers",
    "empty_answers",
    "runtime_error",
    "version_number",
]


def _log() -> logging.Logger:
    """This module's logger; logging is imported on first use (a warm-up skipped), not on
    the edge's import path (logging + traceback + string: ~10 ms of its cold start)."""
    import logging

    return logging.getLogger(__name__)


_clock = time.perf_counter

Arrays = dict[str, np.ndarray[Any, Any]]


def default_providers() -> list[str]:
    """CUDA when onnxruntime has it, then CPU."""
    available = ort.get_available_providers()
    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available] or ["CPUExecutionProvider"]


@dataclass(slots=True)
class LoadedModel:
    """A ready onnxruntime session for one model version, with its checks."""

    entry: ModelVersion[EdgeModelConfig]
    """The version, its config read on the edge path (no pydantic: see _edge_config)."""
    session: ort.InferenceSession
    validator: InputValidator
    output_names: list[str]
    label: str
    limit: int
    """``max_batch_size`` of the config: larger batches are split into runs this size."""
    batched_outputs: frozenset[str]
    """Outputs whose first graph dimension is symbolic: the batch, along which
    rows can be split back to requests. An output with a fixed (or no) first
    dimension describes the whole run, so runs that produce it are never merged
    nor split (see :func:`batched_outputs`)."""
    _run: Callable[[list[str], Mapping[str, np.ndarray[Any, Any]], Any], list[np.ndarray[Any, Any]]]
    strings: bool = False
    """The model has BYTES inputs or outputs (see :meth:`run`)."""
    empty: Mapping[str, np.ndarray[Any, Any]] = field(default_factory=dict)
    """The answer to an empty batch, per output that has one: ``[0, *declared
    dims]`` for each output batched along axis 0 whose declared dims are all
    fixed (see :func:`empty_answers`)."""
    device: str = "cpu"
    """Where runs compute: ``cpu`` (onnxruntime's CPU provider, whose intra-op
    threads take cores), else ``cuda``."""

    def run(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str] | None, batch: int
    ) -> Arrays:
        """Run validated inputs; split batches larger than ``max_batch_size``.

        ``batch`` is the request's row count (``InputValidator.validate``; 0 is
        an empty batch). A batch above the limit is run ``limit`` rows at a time
        and the outputs concatenated along axis 0; a model with an output that
        has no batch dimension cannot be split, so such a request is refused
        (InvalidRequestError) rather than answered with a stitched guess.

        BYTES are ``bytes`` on both sides. onnxruntime's Python binding takes
        string tensors as ``str`` (it ``repr``s a ``bytes`` element into
        ``"b'hello'"``) and returns ``str``: inputs are decoded as UTF-8 (other
        bytes are a TensorValueError) and outputs encoded back.
        """
        if (
            not self.strings
            and not outputs
            and batch > 0
            and (batch <= self.limit or self.limit <= 0)
        ):
            try:
                values = self._run(self.output_names, inputs, None)
            except Exception as exc:  # onnxruntime's exception types are not exported
                raise self._failure(exc) from exc
            return dict(zip(self.output_names, values))  # noqa: B905 (one per name, in order)
        if batch == 0 and self.limit > 0:
            return self._empty_batch(outputs)
        if not self.strings:
            return self._run_batches(inputs, outputs, batch)
        result = self._run_batches(_as_text(inputs), outputs, batch)
        return {k: _as_bytes(v) if v.dtype.kind == "O" else v for k, v in result.items()}

    def _empty_batch(self, outputs: Sequence[str] | None) -> Arrays:
        """The answer to 0 rows of a batched model, without calling the runtime.

        onnxruntime is not safe on zero-size tensors (a graph can abort the
        process), and its answer would depend on whether the empty request was
        merged with others. An empty batch is therefore always answered the same
        way: empty outputs of shape ``[0, *declared dims]``, or, when an output's
        shape is not known without running the model (a variable dim, no batch
        dimension), an InvalidRequestError (400).
        """
        names = self.output_names if outputs is None else self._check_outputs(outputs)
        unknown = [n for n in names if n not in self.empty]
        if unknown:
            raise InvalidRequestError(
                f"model {self.entry.name!r} cannot answer an empty batch (0 rows): the "
                f"shape of output(s) {unknown} is not known without running it; "
                "send at least one row"
            )
        return {n: self.empty[n].copy() for n in names}

    def _run_batches(
        self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str] | None, batch: int
    ) -> Arrays:
        names = self.check_request(outputs, batch)
        limit = self.limit
        if limit <= 0 or batch <= limit:
            values = self._call(names, inputs)
            # onnxruntime returns exactly the outputs asked for, in order.
            return {names[0]: values[0]} if len(names) == 1 else dict(zip(names, values))  # noqa: B905
        starts = range(0, batch, limit)
        parts = [
            self._call(names, {k: v[i : i + limit] for k, v in inputs.items()}) for i in starts
        ]
        sizes = [min(limit, batch - i) for i in starts]
        return {n: self.concat_rows(n, [p[j] for p in parts], sizes) for j, n in enumerate(names)}

    def splittable(self, names: Sequence[str]) -> bool:
        """Whether runs producing ``names`` can be merged and split along rows."""
        return self.limit > 0 and all(n in self.batched_outputs for n in names)

    def concat_rows(
        self, name: str, values: Sequence[np.ndarray[Any, Any]], rows: Sequence[int]
    ) -> np.ndarray[Any, Any]:
        """Outputs of runs of ``rows`` rows each, joined along axis 0.

        InferenceError when an output does not have one row per input row (a
        graph whose symbolic first dimension is not the batch): the server's
        model is at fault, not the request.
        """
        for value, count in zip(values, rows, strict=True):
            check_rows(
                value, count, output=name, source=self.label,
                hint="; set max_batch_size: 0 in its config",
            )  # fmt: skip
        return np.concatenate(values)

    def _call(
        self, names: list[str], inputs: Mapping[str, np.ndarray[Any, Any]]
    ) -> list[np.ndarray[Any, Any]]:
        try:
            return self._run(names, inputs, None)
        except Exception as exc:  # onnxruntime's exception types are not exported
            raise self._failure(exc) from exc

    def _failure(self, exc: Exception) -> EdgecloudError:
        """onnxruntime's failure as the error of whoever caused it (see :func:`runtime_error`)."""
        return runtime_error(exc, f"{self.entry.name!r} version {self.entry.version}")

    def check_request(self, outputs: Sequence[str] | None, batch: int) -> list[str]:
        """The outputs a run of ``batch`` rows produces, checked as :meth:`run` checks
        them before the runtime: requested outputs exist (an empty list means all),
        and a batch above ``max_batch_size`` can be split along rows.

        Raises:
            InvalidRequestError: an unknown output, or an unsplittable oversized batch.
        """
        names = self.output_names if not outputs else self._check_outputs(outputs)
        limit = self.limit
        if 0 < limit < batch and not self.splittable(names):
            raise InvalidRequestError(
                f"model {self.entry.name!r} takes at most {limit} rows per run and its "
                f"output(s) {sorted(set(names) - self.batched_outputs)} have no batch "
                f"dimension to split a batch of {batch} along; send at most {limit} rows"
            )
        return names

    def runtime_calls(self, batch: int) -> list[int]:
        """The rows of each runtime call :meth:`run` makes for ``batch`` rows (none for 0)."""
        limit = self.limit
        if batch <= 0:
            return []
        if limit <= 0 or batch <= limit:
            return [batch]
        return [min(limit, batch - start) for start in range(0, batch, limit)]

    def _check_outputs(self, outputs: Sequence[str]) -> list[str]:
        """The requested outputs; an empty list means all (as absent: the REST and gRPC rule)."""
        if len(set(outputs)) != len(outputs):
            twice = sorted({o for o in outputs if list(outputs).count(o) > 1})
            raise InvalidRequestError(f"output(s) {twice} are requested twice; list each once")
        unknown = [o for o in outputs if o not in self.output_names]
        if unknown:
            raise InvalidRequestError(
                f"model {self.entry.name!r} has no output(s) {unknown}; "
                f"its outputs are {self.output_names}"
            )
        return list(outputs)


class LocalBackend(Backend):
    """Serve models from a :class:`ModelRepository` with onnxruntime, in process.

    Sessions load on first use (or up front with ``preload``) and stay cached
    per model version. A model that fails to load raises ``ModelLoadError`` for
    its own requests only.

    Hot swap: :meth:`open` builds a fresh session for any version on disk and
    :meth:`publish` replaces, in one step, the set of sessions served for a
    model (Triton's model control: the new version is loaded before the old
    one is dropped, and a load that fails leaves the served set as it was).

    Loading checks the version's files against their sha256 (``verify``): True
    skips a file a previous full check found intact and that has not changed
    since (:mod:`edgecloud._verified` says what that does and does not catch),
    ``"full"`` hashes every file at every load, False checks nothing.
    ``warmup``: a session loaded ahead of a request (:meth:`load`, :meth:`open`,
    ``preload``) runs once on zeros, so the first request is not the slow one; a
    session that :meth:`infer` loads is not warmed up: that request is its first
    run either way.

    >>> with LocalBackend("model-repo", intra_op_threads=1) as local:  # doctest: +SKIP
    ...     response = local.infer(InferRequest("digits-small", {"pixels": x}))
    """

    name = "local"

    def __init__(
        self,
        repository: ModelRepository | str | os.PathLike[str],
        *,
        intra_op_threads: int | None = None,
        providers: Sequence[str] | None = None,
        warmup: bool = True,
        preload: Sequence[str] = (),
        verify: bool | Literal["full"] = True,
        device: Literal["auto", "cpu", "cuda"] = "cpu",
        spin: bool = True,
    ) -> None:
        """``spin``: onnxruntime's intra-op threads busy-wait for work between and
        after runs (its default, ``session.intra_op.allow_spinning``); False
        makes them sleep, for a server whose cores other threads and processes
        need (moot with ``intra_op_threads=1``: no pool)."""
        self.repository = (
            repository if isinstance(repository, ModelRepository) else ModelRepository(repository)
        )
        self.intra_op_threads = intra_op_threads
        self.spin = spin
        self.providers = list(providers) if providers is not None else default_providers()
        self.warmup = warmup
        if verify not in (True, False, "full"):
            raise ConfigError(f"verify must be True, False or 'full', not {verify!r}")
        self.verify = verify
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, not {device!r}")
        self.device = device
        self._cuda: bool | None = None
        self._models: dict[tuple[str, int], LoadedModel] = {}
        self._latest: dict[str, LoadedModel] = {}
        self._published: dict[str, dict[int, LoadedModel]] = {}
        """Models whose served sessions were set by :meth:`publish` (not the version policy)."""
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        for model in preload:
            self.load(model)

    # -- loading ---------------------------------------------------------------

    def load(self, model: str, version: int | str | None = None) -> LoadedModel:
        """Load (or return the cached) session for a model version, warmed up (``warmup``).

        ``version``: as :func:`version_number` reads it (None, ``"latest"`` or
        ``""`` for the newest served one, else a number: ``"+2"`` or ``" 2"`` name
        no version). ModelNotFoundError for a version that is not served.
        """
        return self._load(model, version, self.warmup)

    def _load(self, model: str, version: int | str | None, warm: bool) -> LoadedModel:
        number = version_number(version, model)
        cached = self._latest.get(model) if number is None else self._models.get((model, number))
        if cached is not None:
            return cached
        if model in self._published:
            with self._lock:
                published = self._published_session(model, number)
            if published is not None:
                return published
        entry = self.repository.get(model, number, verify=False, lean=True)
        key = (entry.name, entry.version)
        with self._lock:
            published = self._published_session(model, number)
            if published is not None:  # published while this one was looked up
                return published
            loaded = self._models.get(key)
            if loaded is None:
                loaded = self._models[key] = self._open(entry, warm)
                self._forget_unserved(entry.name)
            if number is None:
                self._latest[model] = loaded
        return loaded

    def open(self, model: str, version: int | str) -> LoadedModel:
        """A fresh, warmed-up session for one version on disk, not cached nor served.

        Any version on disk can be opened, whatever the version policy says
        (an update agent keeps the previous version to roll back to). Serve it
        with :meth:`publish`; until then requests never reach it.

        Raises:
            ModelNotFoundError: no such model, or no such version on disk.
            ModelLoadError: the version's files fail their sha256 check (when
                ``verify``), its config does not match the graph, or
                onnxruntime cannot load it.
        """
        number = version_number(version, model)
        entry = self.repository.get(model, number, verify=False, served_only=False, lean=True)
        return self._open(entry, self.warmup)

    def publish(
        self, model: str, versions: Mapping[int, LoadedModel], latest: int | None = None
    ) -> None:
        """Serve exactly ``versions`` for ``model`` from now on, replacing what was served.

        ``versions`` maps a version number to a session from :meth:`open` (or
        :meth:`load`). Requests without a version get ``latest`` (default: the
        highest key); an empty mapping serves nothing (every request is a
        ModelNotFoundError) until the next publish. The switch is atomic: a
        request sees the old set or the new one, never a mix or a miss, and a
        request already running finishes on the session it started with (the
        old session is freed when its last request drops it). From then on the
        model no longer follows the repository's version policy: a version not
        published is not served, even if it is on disk (:meth:`unload` returns
        the model to the policy).

        Raises:
            ConfigError: a session of another model or version than its key, or
                ``latest`` not among the keys (nothing is changed).
        """
        table = dict(versions)
        for number, loaded in table.items():
            if (loaded.entry.name, loaded.entry.version) != (model, number):
                raise ConfigError(
                    f"publish {model!r}: version {number} is given a session of model "
                    f"{loaded.entry.name!r} version {loaded.entry.version}"
                )
        if latest is None and table:
            latest = max(table)
        if latest is not None and latest not in table:
            raise ConfigError(
                f"publish {model!r}: latest version {latest} is not among the published "
                f"versions {sorted(table)}"
            )
        with self._lock:
            # New entries go in before stale ones go out: a lookup without the
            # lock finds the old session or the new one; a miss takes the lock.
            self._published[model] = table
            if latest is not None:
                self._latest[model] = table[latest]
            else:
                self._latest.pop(model, None)
            for number, loaded in table.items():
                self._models[(model, number)] = loaded
            for key in [k for k in self._models if k[0] == model and k[1] not in table]:
                del self._models[key]

    def published(self, model: str) -> dict[int, LoadedModel] | None:
        """The sessions :meth:`publish` set for ``model`` (a copy), or None if it follows
        the version policy."""
        with self._lock:
            table = self._published.get(model)
            return None if table is None else dict(table)

    def _published_session(self, model: str, number: int | None) -> LoadedModel | None:
        """A published model's session for ``number`` (None: its latest), or None when
        ``model`` is not published (call under the lock).

        Raises:
            ModelNotFoundError: ``model`` is published but not version ``number``.
        """
        table = self._published.get(model)
        if table is None:
            return None
        loaded = self._latest.get(model) if number is None else table.get(number)
        if loaded is None:
            which = "any version" if number is None else f"version {number}"
            raise ModelNotFoundError(
                f"model {model!r} does not serve {which} (published: {sorted(table)})"
            )
        return loaded

    def _forget_unserved(self, model: str) -> None:
        """Drop sessions of versions the version policy no longer serves (call under the lock).

        Sessions are cached per version; without this, every version ever
        loaded while versions are hot-swapped in would stay in memory.
        """
        served = set(
            self.repository.config(model, lean=True).version_policy.select(
                self.repository.versions(model)
            )
        )
        for key in [k for k in self._models if k[0] == model and k[1] not in served]:
            del self._models[key]
        latest = self._latest.get(model)
        if latest is not None and latest.entry.version not in served:
            del self._latest[model]

    def unload(self, model: str) -> None:
        """Drop every cached session of a model (the next request reloads); a published
        model returns to the repository's version policy."""
        with self._lock:
            self._published.pop(model, None)
            self._latest.pop(model, None)
            for key in [k for k in self._models if k[0] == model]:
                del self._models[key]

    def loaded(self) -> list[LoadedModel]:
        """Sessions currently held."""
        return list(self._models.values())

    def _open(self, entry: ModelVersion[EdgeModelConfig], warm: bool) -> LoadedModel:
        if self.verify:
            entry.verify(full=self.verify == "full")
        options = ort.SessionOptions()
        if self.intra_op_threads is not None:
            options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        if not self.spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(
                str(entry.model_path), sess_options=options, providers=self.providers
            )
        except Exception as exc:  # onnxruntime's exception types are not exported
            raise ModelLoadError(
                f"model {entry.name!r} version {entry.version}: onnxruntime cannot load "
                f"{entry.model_path}: {' '.join(str(exc).split())}"
            ) from exc
        config = entry.config
        self._check_declared(entry, session)
        label = f"{self.name}:{entry.name}/{entry.version}"
        run = _fast_run(session)
        if self._wants_torch(entry):
            run = TorchRunner(
                entry.path / TORCHSCRIPT_FILE,
                [i.name for i in config.inputs],
                [o.name for o in config.outputs],
                device="cuda",
            )
            label = f"{self.name}-cuda:{entry.name}/{entry.version}"
        loaded = LoadedModel(
            entry=entry,
            session=session,
            validator=InputValidator(entry.name, config.inputs, config.max_batch_size),
            output_names=[o.name for o in config.outputs],
            label=label,
            limit=config.max_batch_size,
            batched_outputs=batched_outputs(session),
            _run=run,
            strings=any(t.datatype == "BYTES" for t in (*config.inputs, *config.outputs)),
            device="cuda"
            if isinstance(run, TorchRunner) or session.get_providers()[0] != "CPUExecutionProvider"
            else "cpu",
        )
        loaded.empty = empty_answers(config.outputs, loaded.batched_outputs, config.batched)
        if warm:
            _warm_up(loaded)
        return loaded

    def _wants_torch(self, entry: ModelVersion[EdgeModelConfig]) -> bool:
        """Whether this version runs through torch on CUDA (see torch_runner)."""
        if self.device == "cpu":
            return False
        if self._cuda is None:
            self._cuda = cuda_available()
        has_script = (entry.path / TORCHSCRIPT_FILE).is_file()
        if self.device == "cuda" and not (self._cuda and has_script):
            why = (
                "no CUDA device is visible to torch"
                if not self._cuda
                else (f"{entry.path / TORCHSCRIPT_FILE} is missing")
            )
            raise ModelLoadError(
                f"model {entry.name!r} version {entry.version} cannot run on cuda: {why}"
            )
        return self._cuda and has_script

    @staticmethod
    def _check_declared(
        entry: ModelVersion[EdgeModelConfig], session: ort.InferenceSession
    ) -> None:
        actual = {i.name for i in session.get_inputs()}
        declared = {i.name for i in entry.config.inputs}
        outputs = {o.name for o in session.get_outputs()}
        missing = {o.name for o in entry.config.outputs} - outputs
        if actual != declared or missing:
            raise ModelLoadError(
                f"model {entry.name!r} version {entry.version}: config does not match "
                f"{entry.model_path}: graph inputs {sorted(actual)}, config inputs "
                f"{sorted(declared)}, config outputs absent from graph {sorted(missing)}"
            )

    # -- inference -------------------------------------------------------------

    def infer(self, request: InferRequest) -> InferResponse:
        loaded = self._latest.get(request.model) if request.version is None else None
        if loaded is None:  # this request is the session's first run: no warm-up before it
            loaded = self._load(request.model, request.version, warm=False)
        batch, inputs = loaded.validator.check(request.inputs)
        start = _clock()
        outputs = loaded.run(inputs, request.outputs, batch)
        elapsed = _clock() - start
        return InferResponse(
            model=loaded.entry.name,
            version=str(loaded.entry.version),
            outputs=outputs,
            trace=Trace(loaded.label, [Span(loaded.label, "compute", elapsed)]),
            id=request.id,
        )

    async def infer_async(self, request: InferRequest) -> InferResponse:
        """Run in this backend's thread pool (onnxruntime releases the GIL)."""
        import asyncio  # here, not at import: asyncio loads ssl (+7 MB RSS on the edge)
        from concurrent.futures import ThreadPoolExecutor

        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=min(8, os.cpu_count() or 2), thread_name_prefix="edgecloud-local"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.infer, request)

    def close(self) -> None:
        with self._lock:
            self._models.clear()
            self._latest.clear()
            self._published.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _fast_run(
    session: ort.InferenceSession,
) -> Callable[[list[str], Mapping[str, np.ndarray[Any, Any]], Any], list[np.ndarray[Any, Any]]]:
    """The session's C++ ``run``, skipping the Python wrapper's input checks.

    edgecloud validates names, dtypes and shapes itself before every call, so
    the wrapper's second pass is pure overhead. Falls back to the public
    ``run`` if onnxruntime ever moves the binding.
    """
    inner = getattr(session, "_sess", None)
    run = getattr(inner, "run", None)
    return run if callable(run) else session.run  # type: ignore[no-any-return]


def _as_text(inputs: Mapping[str, np.ndarray[Any, Any]]) -> Arrays:
    """BYTES inputs as the object arrays of UTF-8 ``str`` onnxruntime's binding needs.

    Every string kind is converted — ``O`` (bytes or str elements), ``S`` and
    ``U``: onnxruntime cuts a numpy ``U``/``S`` element at its first NUL
    (``"a\\x00b"`` became ``"a"``) but keeps NULs inside an object array's
    ``str``, so only object arrays reach it and every element arrives exact.
    (numpy itself drops *trailing* NULs of ``U``/``S`` elements when the
    array is built; that is numpy's semantics, and an object array keeps
    them.) Bytes that are not UTF-8, and a ``str`` UTF-8 cannot encode (a
    lone surrogate), are a TensorValueError naming the tensor and element.
    """
    out = dict(inputs)
    for name, array in inputs.items():
        if array.dtype.kind not in ("O", "S", "U"):
            continue
        items = array.reshape(-1).tolist()
        text = np.empty(array.shape, dtype=object)
        try:
            text.reshape(-1)[:] = [_utf8_text(x) for x in items]
        except (UnicodeDecodeError, UnicodeEncodeError):
            index, item = next((i, x) for i, x in enumerate(items) if not _is_utf8(x))
            raise utf8_error(name, index, item) from None
        out[name] = text
    return out


def _utf8_text(item: Any) -> Any:
    """``item`` as text onnxruntime can encode: bytes decoded, str checked."""
    if isinstance(item, bytes):
        return item.decode()
    if isinstance(item, str) and not item.isascii():
        item.encode()  # raises UnicodeEncodeError for a lone surrogate
    return item


def _is_utf8(item: Any) -> bool:
    try:
        _utf8_text(item)
    except (UnicodeDecodeError, UnicodeEncodeError):
        return False
    return True


def _as_bytes(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """onnxruntime's ``str`` string outputs as UTF-8 ``bytes``."""
    out = np.empty(array.shape, dtype=object)
    out.reshape(-1)[:] = [x.encode() if isinstance(x, str) else x for x in array.reshape(-1)]
    return out


def warm_up_shapes(config: ModelConfig | EdgeModelConfig) -> dict[str, list[int]]:
    """The full shapes of the warm-up request (one row; variable dimensions 1)."""
    return {
        spec.name: [1 if d == -1 else d for d in spec.full_shape(config.batched)]
        for spec in config.inputs
    }


def _warm_up(loaded: LoadedModel) -> None:
    """One inference on zeros so the first real request is not the slow one; skipped
    for a request over :data:`~edgecloud.samples.BUILT_BYTES` (a huge fixed dimension)."""
    config = loaded.entry.config
    if any(spec.datatype == "BYTES" for spec in config.inputs):
        return
    from ..samples import built_size_error

    error = built_size_error(config, warm_up_shapes(config), "warm-up")
    if error is not None:  # best effort: a model too large to warm up is loaded cold
        _log().debug("warm-up of %s skipped: %s", loaded.label, error.message)
        return
    inputs: Arrays = {
        name: np.zeros(shape, dtype=numpy_dtype(spec.datatype))
        for spec, (name, shape) in zip(config.inputs, warm_up_shapes(config).items(), strict=True)
    }
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # a graph that rejects zeros must not log an error
    try:
        loaded._run(loaded.output_names, inputs, quiet)
    except Exception as exc:  # some graphs reject zeros; warm-up is best effort
        _log().debug("warm-up of %s skipped: %s", loaded.label, exc)


def version_number(version: int | str | None, model: str = "") -> int | None:
    """The version a path or request names: None for the newest served one, else its number.

    The one version parser of every front end (infer, ready and metadata, over
    REST, gRPC and LocalBackend): None, ``""`` and ``"latest"`` name the newest
    served version; a number is a non-negative int, or ASCII digits only, at
    most 18 of them (a version is an int64 in Triton's model config).

    Raises:
        ModelNotFoundError: anything else — a sign (``"+2"``), a space, a
            non-ASCII digit, a 5,000-digit string Python refuses to convert —
            names no version of ``model`` (404, as an unserved number is).
    """
    if version is None or version == "" or version == "latest":
        return None
    if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
        return version
    if isinstance(version, str) and len(version) <= 18 and version.isascii() and version.isdigit():
        return int(version)
    text = str(version)
    shown = text if len(text) <= 40 else text[:40] + "…"
    raise ModelNotFoundError(
        f"model {model!r} has no version {shown!r}; versions are numbers or 'latest'"
    )


def empty_answers(
    specs: Sequence[Spec], batched: frozenset[str], model_batches: bool
) -> dict[str, np.ndarray[Any, Any]]:
    """Each output's answer to an empty batch, where it is known without a run.

    An output qualifies when the model batches (``max_batch_size > 0``), the
    graph's first dimension of the output is the symbolic batch (``batched``,
    see :func:`batched_outputs`), and every declared non-batch dimension is
    fixed: its answer is ``np.empty((0, *spec.shape))`` of its datatype.
    """
    if not model_batches:
        return {}
    return {
        s.name: np.empty((0, *s.shape), dtype=numpy_dtype(s.datatype))
        for s in specs
        if s.name in batched and all(d > 0 for d in s.shape)
    }


def batched_outputs(session: ort.InferenceSession) -> frozenset[str]:
    """Names of the outputs whose first dimension is symbolic (``"batch"``, None).

    onnxruntime reports a symbolic dimension as a string or None and a fixed
    one as an int; a rank-0 output has no first dimension at all.
    """
    return frozenset(
        o.name for o in session.get_outputs() if o.shape and not isinstance(o.shape[0], int)
    )


#: onnxruntime's failure classes that mean "these inputs do not fit this graph"
#: (``onnxruntime.capi.onnxruntime_pybind11_state``: status codes 2 INVALID_ARGUMENT
#: and 1 FAIL, the code of a kernel's ORT_ENFORCE). Seen: Gather with an index
#: out of range and silero-vad's unsupported ``sr`` (InvalidArgument); a
#: Reshape, Pad or broadcast the shapes do not fit (Fail).
_CALLERS = tuple(
    cls for cls in (getattr(_ort_state, n, None) for n in ("InvalidArgument", "Fail"))
    if isinstance(cls, type)
)  # fmt: skip
#: A FAIL that is the server's: memory ran out (onnxruntime's BFC arena, the C++ runtime).
_SERVER_FAULTS = ("Failed to allocate memory", "bad_alloc", "out of memory")


def runtime_error(exc: Exception, what: str) -> EdgecloudError:
    """The typed error for an exception onnxruntime raised running ``what``.

    The caller's (InvalidRequestError, 400, no fallback) when onnxruntime
    rejects the values or shapes of inputs that passed the declared checks:
    an invalid argument, or a kernel's failed check (a Reshape that does not
    fit). The server's (InferenceError, 500) for anything else: memory
    exhausted, an execution provider or engine failure, a runtime exception.
    The message keeps onnxruntime's own words, on one line.
    """
    detail = " ".join(str(exc).split())
    if isinstance(exc, _CALLERS) and not any(s in detail for s in _SERVER_FAULTS):
        return InvalidRequestError(f"model {what} rejected the request's inputs: {detail}")
    return InferenceError(f"onnxruntime failed on model {what}: {detail}")
