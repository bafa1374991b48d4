"""The on-disk model repository, laid out the way Triton users expect.

::

    <repo>/
      <model>/
        config.yaml            ModelConfig: inputs, outputs, labels, batching, policy
        1/
          model.onnx
          samples.npz          optional: sample inputs (+ labels), see edgecloud.samples
          version.json         sha256 of every file in the version, metadata
        2/ ...

Every artefact is hashed when written and checked when loaded: a corrupt or
missing file is a :class:`ModelLoadError` naming the path, and one broken model
never hides the others.

A Triton model directory (``config.pbtxt`` and no ``config.yaml``, or bare
``<version>/model.onnx`` directories without ``version.json``) is served as it
is: :mod:`edgecloud.triton_config` reads its config (cached until its files
change), its versions are checked against the graph instead of a sha256, and
nothing is ever written into it (``add_version`` refuses; ``edgecloud import
--from-triton`` converts one into an edgecloud model).

Writes that add several versions (``edgecloud split``: heads and tails) are
crash-consistent through a journal, ``<repo>/.pending/<id>.json``: before a
version (or a new model, or a rewritten config) is written, it is recorded
there (written to a temporary file, fsynced, renamed, directory fsynced).
Every reader (:meth:`ModelRepository.model_names`, ``versions``, ``config``,
hence ``status``, ``models list``, ``serve``, LocalBackend) ignores what a
pending record lists and reads the configs it replaced, so a reader sees the
repository as before the write until the record is removed — last, when the
write is complete. A record whose process is gone (SIGKILL, power loss) is
rolled back by the next writer (``add_version``, ``split``, ``compress``,
``zoo build``) or ``models list``: its versions, new models and files are
removed or restored, then the record itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, overload

from .errors import (
    ConfigError,
    MissingDependencyError,
    ModelLayoutError,
    ModelLoadError,
    ModelNotFoundError,
)
from .tensors import ONNX_TYPES

if TYPE_CHECKING:
    from typing_extensions import TypeVar as DefaultTypeVar

    from ._config_models import DynamicBatching, ModelConfig, VersionPolicy
    from ._edge_config import EdgeModelConfig
    from .tensors import TensorSpec
    from .triton_config import TritonModel

    C = DefaultTypeVar("C", bound="ModelConfig | EdgeModelConfig", default="ModelConfig")
else:
    C = TypeVar("C")

__all__ = [
    "DynamicBatching",
    "ModelConfig",
    "ModelRepository",
    "ModelStatus",
    "ModelVersion",
    "VersionPolicy",
    "config_from_onnx",
]

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "version.json"
MODEL_FILE = "model.onnx"
SAMPLES_FILE = "samples.npz"
PENDING_DIR = ".pending"
LOCK_DIR = ".locks"

INT32_MAX = 2**31 - 1
"""Largest ``max_batch_size`` and preferred batch size: Triton's model config
declares them ``int32`` (model_config.proto)."""
INT64_MAX = 2**63 - 1
"""Largest dimension, version number and queue delay: ``int64`` in Triton's
model_config.proto, and the largest integer every JSON encoder here writes."""
LOCK_TIMEOUT_S = 600.0
"""How long a writer waits for another process's write of the same model."""

_VERSION_NAME = re.compile(r"[1-9][0-9]{0,18}")

_PYDANTIC_MODELS = ("DynamicBatching", "ModelConfig", "TensorSpec", "VersionPolicy")


def __getattr__(name: str) -> Any:
    """The pydantic config models, imported on first use (PEP 562): see
    :mod:`edgecloud._config_models`, which keeps pydantic off the edge path."""
    if name in _PYDANTIC_MODELS:
        from . import _config_models

        return getattr(_config_models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def version_number(directory_name: str) -> int | None:
    """The version a directory named ``directory_name`` holds, or None when it is not one.

    Versions are directories named by a canonical decimal, as Triton reads them:
    ASCII digits, no leading zero, at most :data:`INT64_MAX`. Anything else
    (``01``, ``²``, ``0``, ``1.5``) is not a version and is ignored.
    """
    if not _VERSION_NAME.fullmatch(directory_name):
        return None
    number = int(directory_name)
    return number if number <= INT64_MAX else None


@dataclass(frozen=True, slots=True)
class ModelVersion(Generic[C]):
    """One version of a model on disk, with its config and manifest."""

    name: str
    version: int
    path: Path
    config: C
    """The pydantic config (``ModelVersion[ModelConfig]``, the default), or its dataclass
    twin on the edge path (``get(..., lean=True)``: ``ModelVersion[EdgeModelConfig]``)."""
    files: Mapping[str, str]
    """File name (relative to ``path``) -> sha256."""
    metadata: Mapping[str, Any]
    model_file: str = MODEL_FILE
    """The model's file name in ``path`` (a Triton config's ``default_model_filename``)."""
    triton: bool = False
    """A version of a Triton model directory (``config.pbtxt``): no ``version.json``,
    nothing hashed; :meth:`verify` checks the graph against the config instead."""

    @property
    def model_path(self) -> Path:
        return self.path / self.model_file

    def verify(self, *, full: bool = True) -> None:
        """Check every artefact against its recorded sha256 (``model.onnx`` must be recorded).

        ``full=False``: a file a previous full check found intact and that has not
        changed since (same device, inode, size, mtime and ctime) is not read
        again (:mod:`edgecloud._verified`, which says what that does not catch);
        LocalBackend's default. ``full=True`` hashes every file.

        A Triton version has no record: its model file must be there and its
        graph match the config (:func:`edgecloud.triton_config.check_graph`).

        Raises:
            ModelLoadError: a file missing, unreadable or not matching its sha256.
        """
        if self.triton:
            from .triton_config import check_graph

            where = f"model {self.name!r} version {self.version} (Triton, not hashed)"
            check_graph(self.config, self.model_path, where)
            return
        if MODEL_FILE not in self.files:
            raise ModelLoadError(
                f"model {self.name!r} version {self.version}: its record lists no {MODEL_FILE}, "
                "so the model cannot be checked; re-add the version"
            )
        record = None
        if not full:
            from ._verified import VerifiedRecord

            record = VerifiedRecord(self.path)
        for rel, expected in self.files.items():
            file = self.path / rel
            if not file.is_file():
                raise ModelLoadError(f"model {self.name!r} version {self.version}: missing {file}")
            if record is not None and record.vouches(rel, expected):
                continue
            try:
                before = record.settle(rel) if record is not None else None
                actual = sha256_file(file)
            except OSError as exc:  # unreadable (permissions, I/O): this model only
                raise ModelLoadError(
                    f"model {self.name!r} version {self.version}: cannot read {file}: "
                    f"{exc.strerror or exc}"
                ) from exc
            if actual != expected:
                raise ModelLoadError(
                    f"model {self.name!r} version {self.version}: {file} is corrupt "
                    f"(sha256 {actual[:12]}…, expected {expected[:12]}…); rebuild or re-add it"
                )
            if record is not None:
                record.note(rel, expected, before)
        if record is not None:
            record.save()


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """What ``models list`` shows: a model's versions, or why it cannot load."""

    name: str
    versions: list[int]
    served: list[int]
    config: ModelConfig | None
    error: str | None
    ignored: tuple[str, ...] = ()
    """Directories named like a version that are not one (``01``, ``²``: see
    :func:`version_number`), which no reader serves."""


def sha256_file(path: Path) -> str:
    import hashlib  # here: OpenSSL's ~4 ms import is off the edge path when nothing is hashed

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModelRepository:
    """A directory of models: ``<root>/<model>/<version>/model.onnx``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._journal: _Journal | None = None
        self._locks = contextlib.ExitStack()
        """Releases the model locks held by the current transaction (see :meth:`lock`)."""
        self._held: set[str] = set()
        self._triton: dict[str, tuple[tuple[Any, ...], TritonModel]] = {}

    def __repr__(self) -> str:
        return f"ModelRepository({str(self.root)!r})"

    def model_names(self) -> list[str]:
        """Names of all model directories, sorted; broken ones included."""
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if p.is_dir()]
        # Pending records are read after the listing: a writer records a new model
        # before it creates its directory and removes the record last, so a
        # directory seen above is either still recorded now or complete.
        hidden = self._pending().new_models
        return sorted(n for n in found if not n.startswith((".", "_")) and n not in hidden)

    def status(self, *, verify: bool = True) -> list[ModelStatus]:
        """Every model with its versions, or the error that keeps it from loading.

        With ``verify`` (the default) every served version's files are checked
        against their recorded sha256, so a model is reported without error
        only if its files are all there and intact (``models list`` "ready").
        """
        with contextlib.suppress(OSError):  # a read-only repository is still read
            self.recover()
        out = []
        for name in self.model_names():
            try:
                versions = self.versions(name)
            except (OSError, ModelNotFoundError) as exc:  # unreadable, or removed meanwhile
                why = exc.message if isinstance(exc, ModelNotFoundError) else exc.strerror
                out.append(ModelStatus(name, [], [], None, f"cannot list its versions: {why}"))
                continue
            try:
                config = self.config(name)
            except (ModelLoadError, MissingDependencyError, ModelNotFoundError) as exc:
                out.append(ModelStatus(name, versions, [], None, exc.message))
                continue
            served = config.version_policy.select(versions)
            error = None if served else "no version on disk matches the version policy"
            for version in served if verify else ():
                try:
                    self._entry(config, version, verify=True)
                except ModelLoadError as exc:
                    error = exc.message
                    break
            out.append(ModelStatus(name, versions, served, config, error, self._odd(name)))
        return out

    def _odd(self, name: str) -> tuple[str, ...]:
        """Directories of model ``name`` named with digits that are not a version."""
        with contextlib.suppress(OSError):
            return tuple(
                sorted(
                    p.name
                    for p in (self.root / name).iterdir()
                    if p.name.isdigit() and version_number(p.name) is None and p.is_dir()
                )
            )
        return ()

    @overload
    def config(self, name: str, *, lean: Literal[False] = False) -> ModelConfig: ...
    @overload
    def config(self, name: str, *, lean: Literal[True]) -> EdgeModelConfig: ...
    @overload
    def config(self, name: str, *, lean: bool) -> ModelConfig | EdgeModelConfig: ...
    def config(self, name: str, *, lean: bool = False) -> ModelConfig | EdgeModelConfig:
        """The model's config; ModelNotFoundError or ModelLoadError naming the file.

        A Triton model directory's ``config.pbtxt`` is read as it is
        (:mod:`edgecloud.triton_config`; MissingDependencyError without the
        ``triton`` extra).

        ``lean``: the config as the edge path's frozen dataclass
        (:class:`edgecloud._edge_config.EdgeModelConfig`), read without pydantic
        or PyYAML when the file is in the plain form edgecloud writes; same
        checks, same errors (:func:`edgecloud._edge_config.read_config`).
        """
        directory = self._model_dir(name)
        path = directory / CONFIG_FILE
        if not path.exists() and self.is_triton(name):  # triton_config: only without config.yaml
            config = self._triton_model(name).config
            if lean:
                from ._edge_config import EdgeModelConfig

                return EdgeModelConfig.from_model(config)
            return config
        replaced = self._pending().old_files.get(str(path.relative_to(self.root)), b"")
        if replaced is None or (not replaced and not path.is_file()):
            raise ModelLoadError(f"model {name!r} has no config: {path} is missing")
        try:
            text = replaced.decode() if replaced else path.read_text()
        except OSError as exc:  # unreadable (permissions, I/O): this model only
            raise ModelLoadError(
                f"model {name!r}: cannot read {path}: {exc.strerror or exc}"
            ) from exc
        except UnicodeDecodeError as exc:
            raise ModelLoadError(
                f"model {name!r}: invalid config {path}: {_one_line(exc)}"
            ) from exc
        from ._edge_config import read_config

        return read_config(text, name, path, lean=lean)

    def is_triton(self, name: str) -> bool:
        """Whether model ``name`` is a Triton model directory (read-only to edgecloud)."""
        from .triton_config import is_triton_model

        return is_triton_model(self._model_dir(name))

    def _triton_model(self, name: str) -> TritonModel:
        """The Triton model ``name``, read again only when its files change."""
        from .triton_config import read_triton_model

        directory = self._model_dir(name)
        versions = self.versions(name)
        newest = directory / str(versions[-1]) if versions else directory
        stamp = tuple(
            (p.name, st.st_mtime_ns, st.st_size)
            for folder in (directory, newest)
            for p in sorted(folder.iterdir())
            if (st := p.stat()) and p.is_file()
        ) + tuple(versions)
        cached = self._triton.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        model = read_triton_model(directory, name, versions)
        self._triton[name] = (stamp, model)
        return model

    def versions(self, name: str) -> list[int]:
        """Version numbers on disk, ascending."""
        found = self._versions_on_disk(self._model_dir(name))
        pending = self._pending().versions  # after the listing, as in model_names
        return sorted(v for v in found if (name, v) not in pending)

    def served_versions(self, name: str) -> list[int]:
        """Versions the model's version policy serves, ascending."""
        return self.config(name).version_policy.select(self.versions(name))

    @overload
    def get(
        self,
        name: str,
        version: int | str | None = None,
        *,
        verify: bool = True,
        served_only: bool = True,
        lean: Literal[False] = False,
    ) -> ModelVersion[ModelConfig]: ...
    @overload
    def get(
        self,
        name: str,
        version: int | str | None = None,
        *,
        verify: bool = True,
        served_only: bool = True,
        lean: Literal[True],
    ) -> ModelVersion[EdgeModelConfig]: ...
    def get(
        self,
        name: str,
        version: int | str | None = None,
        *,
        verify: bool = True,
        served_only: bool = True,
        lean: bool = False,
    ) -> ModelVersion[Any]:
        """One version of a model; ``None`` or ``"latest"`` is the newest served one.

        ``served_only=False`` reaches every version on disk (tools such as
        ``compress`` work on versions the policy does not serve). ``lean``: its
        config is the edge path's dataclass (see :meth:`config`).
        """
        config = self.config(name, lean=lean)
        on_disk = self.versions(name)
        served = config.version_policy.select(on_disk) if served_only else on_disk
        number = self._resolve_version(name, version, served, "served" if served_only else "")
        return self._entry(config, number, verify)

    def _entry(self, config: C, number: int, verify: bool) -> ModelVersion[C]:
        path = self._model_dir(config.name) / str(number)
        self._check_inside(config.name, path)
        if config.metadata.get("source") == "triton" and self.is_triton(config.name):
            model_file = self._triton_model(config.name).model_file
            entry = ModelVersion(config.name, number, path, config, {}, {}, model_file, True)
            if verify:
                entry.verify()
            return entry
        entry = ModelVersion(
            config.name, number, path, config, *self._read_manifest(config.name, path)
        )
        if verify:
            entry.verify()
        return entry

    def add_version(
        self,
        name: str,
        model: str | os.PathLike[str] | bytes,
        *,
        config: ModelConfig | None = None,
        extra_files: Mapping[str, str | os.PathLike[str] | bytes] | None = None,
        metadata: Mapping[str, Any] | None = None,
        version: int | None = None,
        samples: str | os.PathLike[str] | None = None,
    ) -> ModelVersion:
        """Add a version atomically: written to a temporary directory, then renamed.

        ``config`` (re)writes the model's config; it is required for a new model
        (see :func:`config_from_onnx`). ``samples``: a ``.npz`` of inputs (and
        optional ``labels``) stored as ``samples.npz`` in the version (also
        accepted through ``extra_files``); it is checked against the config
        (:func:`edgecloud.samples.load_samples`, ConfigError naming the file)
        before the version appears. Returns the verified new version.
        """
        import shutil  # here, with the other writers' needs: off the edge's import path

        model_dir = self.root / name
        from .triton_config import is_triton_model

        if model_dir.is_dir() and is_triton_model(model_dir):
            raise ConfigError(
                f"model {name!r} in {self.root} is a Triton model directory, which edgecloud "
                "only reads; convert it into an edgecloud repository with: edgecloud import "
                f"--from-triton {model_dir} --repo OTHER_REPO"
            )
        if config is not None and config.name != name:
            raise ConfigError(f"config names the model {config.name!r} but it is added as {name!r}")
        if config is None and not (model_dir / CONFIG_FILE).is_file():
            raise ConfigError(f"model {name!r} is new: pass a config (see config_from_onnx)")
        files: dict[str, str | os.PathLike[str] | bytes] = {
            MODEL_FILE: model,
            **(extra_files or {}),
        }
        if samples is not None:
            if SAMPLES_FILE in files:
                raise ConfigError("pass the samples either as samples= or in extra_files, not both")
            files[SAMPLES_FILE] = samples
        source = files.get(SAMPLES_FILE)
        if source is not None:  # checked before anything is written; errors name the file
            from .samples import load_samples

            with contextlib.ExitStack() as stack:
                if isinstance(source, bytes):
                    import tempfile

                    held = stack.enter_context(tempfile.NamedTemporaryFile(suffix=".npz"))
                    held.write(source)
                    held.flush()
                    source = held.name
                load_samples(source, config or self.config(name))
        with self.transaction() as journal:
            self.lock(name)  # held until the transaction ends: one writer per model
            number = version
            if number is None:
                recorded = [v for m, v in self._recorded_versions() if m == name]
                number = max([*self._versions_on_disk(model_dir), *recorded], default=0) + 1
            if (model_dir / str(number)).exists():
                raise ConfigError(f"model {name!r} already has version {number}")
            journal.record(name, number, config_file=config is not None)
            model_dir.mkdir(parents=True, exist_ok=True)
            # mkdir (not mkdtemp, which makes 0700 directories): the version gets the
            # umask's permissions, so a service account can serve what a user built.
            staging = model_dir / f".staging-{journal.path.stem}-{_random_hex()}"
            staging.mkdir()
            try:
                self._write_version(staging, files, number, metadata or {})
                if config is not None:
                    _write_atomic(model_dir / CONFIG_FILE, _dump_config(config).encode())
                staging.rename(model_dir / str(number))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            _hook_after_version()
        return self._entry(self.config(name), number, verify=True)

    def next_version(self, name: str) -> int:
        """The number :meth:`add_version` gives model ``name``'s next version (new: 1)."""
        return max(self._versions_on_disk(self.root / name), default=0) + 1

    @staticmethod
    def _versions_on_disk(model_dir: Path) -> list[int]:
        if not model_dir.is_dir():
            return []
        return [
            number
            for p in model_dir.iterdir()
            if (number := version_number(p.name)) is not None and p.is_dir()
        ]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Journal]:
        """Group writes so that a crash leaves the repository as before or as after.

        Nested calls join the outermost. On entry, records of dead processes are
        rolled back (:meth:`recover`); each write records itself first
        (:meth:`_Journal.record`, :meth:`_Journal.protect`); on an exception the
        recorded writes are undone; the record is removed last.
        """
        if self._journal is not None:
            yield self._journal
            return
        self.recover()
        journal = _Journal(self.root)
        self._journal = journal
        try:
            try:
                yield journal
            except BaseException:
                journal.roll_back()
                raise
            finally:
                self._journal = None
            journal.commit()
        finally:
            self._locks.close()  # last: no other writer of these models ran meanwhile

    def lock(self, name: str, *, timeout_s: float = LOCK_TIMEOUT_S) -> None:
        """Hold model ``name``'s writer lock until the current transaction ends.

        One process at a time writes a model: ``fcntl.flock`` on
        ``<repo>/.locks/<name>.lock`` (released by the kernel when a writer
        dies), taken before the version number is chosen and the config read,
        released after the journal record is removed or rolled back. Readers
        take no lock. Re-entrant within a transaction; records of dead writers
        of ``name`` are rolled back once it is held. ConfigError when another
        writer holds it for more than ``timeout_s`` (or the repository is read-only).
        """
        if self._journal is None:
            raise RuntimeError("ModelRepository.lock is taken inside a transaction")
        if name in self._held:
            return
        if not self._take_lock(name, timeout_s):
            raise ConfigError(
                f"model {name!r} in {self.root} is being written by another process for "
                f"over {timeout_s:.0f} s ({self._lock_path(name)}); retry when it is done"
            )
        self.recover()

    def _lock_path(self, name: str) -> Path:
        return self.root / LOCK_DIR / f"{name}.lock"

    def _take_lock(self, name: str, timeout_s: float) -> bool:
        """Take ``name``'s lock within ``timeout_s`` (0: one try); whether it was taken."""
        import fcntl

        path = self._lock_path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ConfigError(
                f"cannot write model {name!r}: {path}: {exc.strerror or exc}"
            ) from exc
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.02)
        self._held.add(name)
        self._locks.callback(self._held.discard, name)
        self._locks.callback(os.close, fd)  # closing the descriptor releases the lock
        return True

    def recover(self) -> list[str]:
        """Roll back the pending writes of processes that are gone; their record ids.

        A record is rolled back only while this process holds the lock of every
        model it names (taken without waiting, or already held): a live writer
        of one of them may be reusing its directories; it recovers them itself.
        """
        rolled = []
        for path, record in _read_records(self.root):
            if _alive(record.get("owner", {})):
                continue
            models = {str(m) for m, _ in record.get("versions", [])}
            models.update(str(m) for m in record.get("new_models", []))
            with contextlib.ExitStack() as taken:
                if not self._try_locks(models, taken):
                    continue
                if not path.exists():
                    continue  # rolled back meanwhile by another process
                _Journal(self.root, path, record).roll_back()
            rolled.append(path.stem)
        return rolled

    def _try_locks(self, models: Iterable[str], taken: contextlib.ExitStack) -> bool:
        """Take, without waiting, the locks of ``models`` not held yet, released by
        ``taken``; False (none kept) when another process holds one or cannot lock."""
        import fcntl

        for model in models:
            if model in self._held:
                continue
            path = self._lock_path(model)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError:
                return False
            taken.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False
        return True

    def _recorded_versions(self) -> set[tuple[str, int]]:
        """Every (model, version) a pending record names, this process's included."""
        return {
            (str(entry[0]), int(entry[1]))
            for _, record in _read_records(self.root)
            for entry in record.get("versions", [])
        }

    def _pending(self) -> _Pending:
        """What the pending records of other processes (live or dead) hide from readers."""
        pending = _Pending()
        for _, record in _read_records(self.root):
            if record.get("owner", {}).get("pid") == os.getpid():
                continue  # this process's own write: it reads what it wrote
            for entry in record.get("versions", []):
                pending.versions.add((str(entry[0]), int(entry[1])))
            pending.new_models.update(record.get("new_models", []))
            for rel, old in record.get("files", {}).items():
                pending.old_files.setdefault(rel, None if old is None else _b64decode(old))
        return pending

    def _write_version(
        self,
        directory: Path,
        files: Mapping[str, str | os.PathLike[str] | bytes],
        number: int,
        metadata: Mapping[str, Any],
    ) -> None:
        import shutil

        hashes = {}
        for rel, source in files.items():
            target = directory / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, bytes):
                target.write_bytes(source)
            else:
                shutil.copyfile(source, target)
            hashes[rel] = sha256_file(target)
        manifest = {
            "version": number,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": hashes,
            "metadata": dict(metadata),
        }
        try:  # strict JSON: NaN and Infinity are not JSON, other readers refuse them
            text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False)
        except ValueError:
            raise ConfigError(
                f"version metadata holds NaN or infinity, which JSON cannot carry: {metadata}"
            ) from None
        (directory / MANIFEST_FILE).write_text(text)

    def _model_dir(self, name: str) -> Path:
        directory = self.root / name
        if (
            not name
            or "/" in name
            or name.startswith(".")
            or not directory.is_dir()
            or name in self._pending().new_models  # another process is still writing it
        ):
            known = ", ".join(self.model_names()) or "none"
            raise ModelNotFoundError(
                f"no model {name!r} in repository {self.root} (models: {known})"
            )
        return directory

    def _resolve_version(
        self, name: str, version: int | str | None, served: list[int], kind: str = "served"
    ) -> int:
        if not served:
            raise ModelLoadError(
                f"model {name!r} has no servable version in {self.root / name} "
                f"(on disk: {self.versions(name)})"
            )
        if version is None or version == "latest" or version == "":
            return served[-1]
        try:
            number = int(version)
        except ValueError:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r}; versions are numbers or 'latest'"
            ) from None
        if number not in served:
            which = f"{kind} " if kind else ""
            raise ModelNotFoundError(
                f"model {name!r} has no {which}version {number} ({kind or 'on disk'}: {served})"
            )
        return number

    def _check_inside(self, name: str, path: Path) -> None:
        """ModelLoadError when a version directory, or a file in it, is a link that leaves
        the repository: what is served is what the repository holds."""
        root = self.root.resolve()
        for item in (path, *path.iterdir()) if path.is_dir() else (path,):
            target = item.resolve()
            if target != root and root not in target.parents:
                raise ModelLayoutError(
                    f"model {name!r} version {path.name}: {item} links to {target}, outside "
                    f"the repository {root}; copy the files into the version instead"
                )

    def _read_manifest(self, name: str, path: Path) -> tuple[dict[str, str], dict[str, Any]]:
        """The version's recorded hashes and metadata; ModelLoadError if there is no usable record.

        A version is only as good as its record: one without ``version.json``, with
        a malformed one, or one that does not list ``model.onnx`` has nothing its
        files can be checked against, so it is broken (never "ready" unchecked).
        """
        where = f"model {name!r} version {path.name}"
        fix = (
            "re-add the version (ModelRepository.add_version, or `edgecloud zoo build "
            "--force` for a zoo model), which writes the files and their record together"
        )
        manifest = path / MANIFEST_FILE
        if not manifest.is_file():
            raise ModelLoadError(
                f"{where}: {manifest} is missing, so its files cannot be checked; {fix}"
            )
        try:
            data = json.loads(manifest.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{where}: {manifest} is not valid JSON ({exc}); {fix}") from exc
        problem = _manifest_problem(data)
        if problem is not None:
            raise ModelLoadError(f"{where}: {manifest} is malformed: {problem}; {fix}")
        recorded = data.get("version", path.name)
        if str(recorded) != path.name:  # a copied or linked directory: not what it is named
            raise ModelLayoutError(
                f"{where}: its {MANIFEST_FILE} records version {recorded!r}, so the directory "
                f"is a copy or link of another version; {fix}"
            )
        return dict(data["files"]), dict(data.get("metadata", {}))


def _manifest_problem(data: Any) -> str | None:
    """What is wrong with a parsed ``version.json``, or None: it must map every file
    (``model.onnx`` included) by a relative path to a 64-hex-digit sha256."""
    if not isinstance(data, dict):
        return f"a JSON object is expected, not {type(data).__name__}"
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        return "'files' (file name -> sha256) is missing or empty"
    if MODEL_FILE not in files:
        return f"'files' does not list {MODEL_FILE}"
    for rel, digest in files.items():
        parts = Path(rel).parts
        if not rel or Path(rel).is_absolute() or ".." in parts or rel == MANIFEST_FILE:
            return f"'files' names {rel!r}, which is not a file inside the version"
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            return f"the sha256 of {rel!r} is {digest!r}, not 64 hex digits"
    if not isinstance(data.get("metadata", {}), dict):
        return "'metadata' is not an object"
    return None


_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class _Pending:
    versions: set[tuple[str, int]] = field(default_factory=set)
    new_models: set[str] = field(default_factory=set)
    old_files: dict[str, bytes | None] = field(default_factory=dict)
    """Repository-relative path -> its bytes before the write (None: it did not exist)."""


class _Journal:
    """One pending multi-version write: ``<repo>/.pending/<id>.json``."""

    def __init__(
        self, root: Path, path: Path | None = None, record: dict[str, Any] | None = None
    ) -> None:
        self.root = root
        self.path = path or root / PENDING_DIR / f"{_random_hex()}.json"
        self.data: dict[str, Any] = record or {
            "owner": _owner(),
            "versions": [],
            "new_models": [],
            "files": {},
        }

    def record(self, model: str, version: int, *, config_file: bool) -> None:
        """Note, durably, that ``model`` ``version`` is about to be written."""
        if not (self.root / model).is_dir() and model not in self.data["new_models"]:
            self.data["new_models"].append(model)
        self.data["versions"].append([model, version])
        if config_file:
            self._note_file(self.root / model / CONFIG_FILE)
        self._save()

    def protect(self, path: Path) -> None:
        """Note ``path``'s bytes before it is (re)written: a roll-back restores them."""
        if self._note_file(path):
            self._save()

    def _note_file(self, path: Path) -> bool:
        rel = str(path.resolve().relative_to(self.root.resolve()))
        if rel in self.data["files"]:
            return False
        old = path.read_bytes() if path.is_file() else None
        if old is None:
            self.data["files"][rel] = None
        else:
            import base64

            self.data["files"][rel] = base64.b64encode(old).decode()
        return True

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path, json.dumps(self.data).encode(), durable=True)

    def commit(self) -> None:
        """The write is complete: remove the record (readers now see it)."""
        if self.path.exists():
            self.path.unlink()
            _fsync_dir(self.path.parent)

    def roll_back(self) -> None:
        """Undo every recorded write, then remove the record.

        Idempotent, so a crash here is finished by the next writer; a step that
        fails (OSError) leaves the record in place for that retry, and never
        hides the error that caused the roll-back.
        """
        import shutil

        complete = True
        touched = {str(model) for model, _ in self.data["versions"]}
        for model, version in self.data["versions"]:
            shutil.rmtree(self.root / str(model) / str(version), ignore_errors=True)
        for rel, old in self.data["files"].items():
            target = self.root / rel
            try:
                if old is None:
                    if target.is_file():
                        target.unlink()
                elif target.parent.is_dir():
                    _write_atomic(target, _b64decode(old))
            except OSError:
                complete = False
        for model in touched:
            directory = self.root / model
            if model in self.data["new_models"]:
                shutil.rmtree(directory, ignore_errors=True)
            elif directory.is_dir():
                for leftover in directory.glob(f".staging-{self.path.stem}-*"):
                    shutil.rmtree(leftover, ignore_errors=True)
        if complete:
            with contextlib.suppress(OSError):
                self.commit()


def _read_records(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    directory = root / PENDING_DIR
    if not directory.is_dir():
        return []
    records = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue  # removed meanwhile; never half-written (renamed into place)
        if isinstance(data, dict):
            records.append((path, data))
    return records


def _random_hex() -> str:
    """32 random hex digits, as ``uuid.uuid4().hex`` names (uuid is off the edge's imports)."""
    return os.urandom(16).hex()


def _b64decode(text: str) -> bytes:
    import base64  # off the edge's import path: only a pending write's record holds base64

    return base64.b64decode(text)


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "start": _start_time(os.getpid())}


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22),
    which tells a reused pid from the writer; None where /proc is not there."""
    fields = _proc_stat(pid)
    return fields[19] if fields else None


def _alive(owner: Mapping[str, Any]) -> bool:
    """Whether the writer that owns a record still runs (a zombie does not: a SIGKILLed
    writer whose parent died too waits for init to reap it)."""
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields is None:
        return not Path("/proc/self/stat").exists()  # no /proc: trust kill(0)
    if fields[0] in ("Z", "X"):
        return False
    start = owner.get("start")
    return start is None or fields[19] == start


def _hook_after_version() -> None:
    """Test hook: ``EDGECLOUD_TEST_KILL_AFTER_VERSIONS=N`` SIGKILLs this process after its
    N-th version is written (journal still pending), to test crash consistency."""
    limit = os.environ.get("EDGECLOUD_TEST_KILL_AFTER_VERSIONS")
    if not limit:
        return
    global _VERSIONS_WRITTEN
    _VERSIONS_WRITTEN += 1
    if int(limit) <= _VERSIONS_WRITTEN:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


_VERSIONS_WRITTEN = 0


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def config_from_onnx(
    path: str | os.PathLike[str],
    name: str,
    *,
    max_batch_size: int = 0,
    **fields: Any,
) -> ModelConfig:
    """Derive a config from an ONNX file's declared inputs and outputs.

    Symbolic dimensions become ``-1``. With ``max_batch_size > 0`` the leading
    dimension of every tensor is taken as the batch dimension and dropped, and
    the graph's rows must be independent (nothing here can check it; see
    :attr:`ModelConfig.max_batch_size`): a graph that mixes rows across the
    batch gets merged requests' rows into its answers; keep 0 for it.
    """
    import onnxruntime as ort
    from pydantic import ValidationError

    from ._config_models import ModelConfig
    from .tensors import TensorSpec

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own unexported types
        raise ModelLoadError(f"cannot read ONNX model {path}: {_one_line(exc)}") from exc

    def specs(kind: str, args: list[Any]) -> list[TensorSpec]:
        out = []
        for arg in args:
            dims = [_onnx_dim(path, kind, arg.name, d) for d in arg.shape]
            if max_batch_size > 0:
                dims = dims[1:]
            datatype = _onnx_datatype(path, kind, arg.name, arg.type)
            out.append(TensorSpec(name=arg.name, datatype=datatype, shape=tuple(dims)))
        return out

    inputs = specs("input", session.get_inputs())
    outputs = specs("output", session.get_outputs())
    try:
        return ModelConfig(
            name=name, max_batch_size=max_batch_size, inputs=inputs, outputs=outputs, **fields
        )
    except ValidationError as exc:
        raise ConfigError(f"ONNX model {path}: {_one_line(exc)}") from exc


def _onnx_datatype(path: str | os.PathLike[str], kind: str, tensor: str, onnx_type: str) -> str:
    """The Open Inference Protocol datatype of an ONNX tensor type (``tensor(float)``).

    ConfigError naming the tensor for every type edgecloud does not serve: those
    the protocol has no datatype for or numpy no dtype (bfloat16, the float8 and
    float4 variants, int4/uint4, complex) and non-tensors (sequences, maps,
    optionals, sparse tensors).
    """
    datatype = ONNX_TYPES.get(onnx_type)
    if datatype is None:
        raise ConfigError(
            f"ONNX model {path}: {kind} {tensor!r} has type {onnx_type}, which edgecloud does "
            f"not serve; use one of {', '.join(sorted(ONNX_TYPES))} (convert the graph, "
            "e.g. Cast the tensor at its boundary)"
        )
    return datatype


def _onnx_dim(path: str | os.PathLike[str], kind: str, tensor: str, dim: Any) -> int:
    """One declared ONNX dimension: a size > 0, or -1 for a symbolic or unknown one.

    A fixed size 0 (an empty tensor) is refused, ConfigError naming the tensor:
    it holds no data to serve, and -1 would let any size through (Triton's dims
    are likewise -1 or positive).
    """
    if not isinstance(dim, int):
        return -1  # symbolic ("N") or unknown (None)
    if dim <= 0:
        raise ConfigError(
            f"ONNX model {path}: {kind} {tensor!r} has a dimension of fixed size {dim}; "
            "edgecloud serves tensors whose dimensions are positive or symbolic"
        )
    return dim


def _dump_config(config: ModelConfig) -> str:
    import yaml

    data = config.model_dump(mode="json", exclude_defaults=False)
    return yaml.safe_dump(data, sort_keys=False)


def _write_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` by rename; ``durable``: fsync file and directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk mid-write: no half-written temporary left behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        _fsync_dir(path.parent)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
