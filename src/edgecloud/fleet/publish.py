"""``edgecloud fleet publish``: a model version and its deltas become signed targets.

Targets of ``publish(MODEL, VERSION)`` (custom metadata under ``"edgecloud"``):

* ``MODEL/VERSION/<file>`` for each file of the version's manifest (sha256
  checked before signing; torch checkpoints ``*.pt``/``*.pth`` left out:
  devices run ONNX) and ``MODEL/VERSION/config.json`` (the model's config as
  JSON): ``{"kind": "file", "model", "version"}``; on ``model.onnx``
  ``{"kind": "model", "model", "version", "files": [the other paths]}``.
* ``MODEL/deltas/<FROM>-<TO>.<codec>.delta`` from the newest published
  version below VERSION, one per codec (:mod:`edgecloud.fleet.delta`):
  ``{"kind": "delta", "model", "from", "to", "codec", "lossy", "from_sha256",
  "result_sha256"}``. A changed graph structure (``StructureChanged``) means no
  delta for that pair — devices download the full model, as Mender falls back
  to the full image; so does a delta not smaller than the full model. Both
  are recorded in the result.

Publishing a version that is already published is a no-op when every file is
byte-identical (a retried publish, a CI re-run) and a
:class:`~edgecloud.errors.PublishConflictError` otherwise: a published version
is immutable, since devices may already run it and their deltas start from its
exact bytes (as package registries refuse re-uploading a version).

Everything is computed in memory first, then written by one
:meth:`UpdateRepository.sign` under the repository lock: an error or a crash
before the timestamp's rename publishes nothing.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from ..errors import ConfigError, EdgecloudError, UpdateError
from ..repository import MODEL_FILE, ModelRepository, version_number
from .update_repo import UpdateRepository, check_target_path

__all__ = ["DEFAULT_CODECS", "DeltaMaker", "PublishResult", "parse_version", "publish"]

#: Codecs a delta is built with when none are named (lossless).
DEFAULT_CODECS = ("xor-zstd",)

_CODEC = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")

#: File suffixes never published: torch checkpoints (devices run model.onnx).
SKIPPED_SUFFIXES = (".pt", ".pth")


class DeltaMaker(Protocol):
    """What publish needs of :mod:`edgecloud.fleet.delta` (the delta part's API)."""

    StructureChanged: type[BaseException]

    def make_delta(self, old: bytes, new: bytes, *, codec: str) -> bytes: ...

    def delta_info(self, delta: bytes) -> Any: ...


@dataclass
class PublishResult:
    """What one publish signed (paths and sizes in bytes) and which deltas it did not build."""

    model: str
    version: int
    targets_version: int
    files: dict[str, int] = field(default_factory=dict)
    deltas: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    unchanged: bool = False
    """The version was already published with these exact bytes: nothing signed."""

    def summary(self) -> str:
        """One line for the CLI."""
        if self.unchanged:
            return (
                f"{self.model} version {self.version} is already published with these bytes "
                f"(targets v{self.targets_version}); nothing to do"
            )
        full = sum(self.files.values())
        parts = [f"{len(self.files)} files ({full} bytes)"]
        parts += [f"delta {p.rsplit('/', 1)[-1]} ({n} bytes)" for p, n in self.deltas.items()]
        parts += [f"no delta: {why}" for why in self.skipped]
        return (
            f"published {self.model} version {self.version} as targets "
            f"v{self.targets_version}: " + "; ".join(parts)
        )


def parse_version(text: str) -> int:
    """``text`` as a version number (``3``), else ConfigError naming the form."""
    number = version_number(text.strip()) if isinstance(text, str) else None
    if number is None:
        raise ConfigError(
            f"VERSION must be a version number such as 3 (digits, no leading zero), got {text!r}"
        )
    return number


def load_delta_maker() -> DeltaMaker | None:
    """The delta part's module, or None while it is not installed (full targets only)."""
    try:
        module = importlib.import_module("edgecloud.fleet.delta")
    except ModuleNotFoundError as exc:
        if exc.name != "edgecloud.fleet.delta":
            raise
        return None
    return cast(DeltaMaker, module)


def publish(
    models: ModelRepository,
    model: str,
    version: int,
    fleet: UpdateRepository,
    *,
    codecs: tuple[str, ...] = DEFAULT_CODECS,
    deltas: DeltaMaker | None = None,
) -> PublishResult:
    """Sign ``model`` ``version`` of ``models`` and its deltas into ``fleet``.

    ``deltas`` builds them (default: :func:`load_delta_maker`; None when the
    delta module is absent publishes full targets only, recorded in ``skipped``).

    Raises:
        ModelNotFoundError: no such model or version in ``models``.
        ModelLoadError: a file of the version does not match its sha256.
        PublishConflictError: the version is published with other bytes.
        ConfigError: a bad codec name, a Triton model (nothing hashed).
        UpdateRepositoryError: a key is missing or not the role's.
    """
    entry = models.get(model, version, served_only=False, verify=True)
    for codec in codecs:
        if not isinstance(codec, str) or not _CODEC.fullmatch(codec):
            raise ConfigError(
                f"codec name {codec!r} is not valid: lowercase letters, digits and '-' "
                "(xor-zstd, int8, topk)"
            )
    if entry.triton:
        raise ConfigError(
            f"model {model!r} is a Triton model directory (its files are not hashed); "
            f"import it with edgecloud import before publishing"
        )
    files = _version_files(entry)
    result = PublishResult(model, version, 0, files={p: len(d) for p, d in files.items()})
    with fleet.locked():
        published = fleet.targets()
        if _already(published, files, result, model, version):
            result.targets_version = fleet.version()
            return result
        maker = deltas if deltas is not None else load_delta_maker()
        previous = _previous(published, model, version)
        built: dict[str, tuple[bytes, dict[str, Any]]] = {}
        if maker is None:
            result.skipped.append("the delta module is not installed (full targets only)")
        elif previous is None:
            result.skipped.append(f"no version of {model} below {version} is published")
        else:
            old = fleet.read_target(f"{model}/{previous}/{MODEL_FILE}")
            new = files[f"{model}/{version}/{MODEL_FILE}"]
            built = _deltas(maker, old, new, model, previous, version, codecs, result)
        for path, data in files.items():
            fleet.put_target(path, data, _file_custom(path, model, version, list(files)))
        for path, (data, custom) in built.items():
            fleet.put_target(path, data, custom)
            result.deltas[path] = len(data)
        result.targets_version = fleet.sign()
    return result


def _version_files(entry: Any) -> dict[str, bytes]:
    """Target path -> bytes for every published file of a verified version."""
    prefix = f"{entry.name}/{entry.version}"
    files: dict[str, bytes] = {}
    for rel in sorted(entry.files):
        if rel.endswith(SKIPPED_SUFFIXES):
            continue
        files[check_target_path(f"{prefix}/{rel}")] = (entry.path / rel).read_bytes()
    config = entry.config.model_dump(mode="json")
    files[f"{prefix}/config.json"] = json.dumps(config, indent=2, sort_keys=True).encode()
    return files


def _file_custom(path: str, model: str, version: int, paths: list[str]) -> dict[str, Any]:
    if path.endswith(f"/{MODEL_FILE}"):
        others = [p for p in paths if p != path]
        info = {"kind": "model", "model": model, "version": version, "files": others}
    else:
        info = {"kind": "file", "model": model, "version": version}
    return {"edgecloud": info}


def _already(
    published: dict[str, Any], files: dict[str, bytes], result: PublishResult, model: str,
    version: int,
) -> bool:  # fmt: skip
    """True when ``version`` is published with exactly ``files``; PublishConflictError
    when it is published otherwise; False when it is not published."""
    prefix = f"{model}/{version}/"
    mine = {path: t for path, t in published.items() if path.startswith(prefix)}
    if not mine:
        return False
    same = set(mine) == set(files) and all(
        mine[p].hashes.get("sha256") == hashlib.sha256(d).hexdigest() for p, d in files.items()
    )
    if not same:
        from ..errors import PublishConflictError

        raise PublishConflictError(
            f"{model} version {version} is already published with other files; published "
            "versions are immutable (devices may run them): publish a new version number"
        )
    result.unchanged = True
    return True


def _previous(published: dict[str, Any], model: str, version: int) -> int | None:
    """The newest version of ``model`` below ``version`` published as a model target."""
    found = []
    for target in published.values():
        info = (target.custom or {}).get("edgecloud") if isinstance(target.custom, dict) else None
        if isinstance(info, dict) and info.get("kind") == "model" and info.get("model") == model:
            number = info.get("version")
            if isinstance(number, int) and number < version:
                found.append(number)
    return max(found, default=None)


def _deltas(
    maker: DeltaMaker, old: bytes, new: bytes, model: str, previous: int, version: int,
    codecs: tuple[str, ...], result: PublishResult,
) -> dict[str, tuple[bytes, dict[str, Any]]]:  # fmt: skip
    """Delta targets from ``previous`` to ``version``, one per codec that applies."""
    built: dict[str, tuple[bytes, dict[str, Any]]] = {}
    old_sha, new_sha = hashlib.sha256(old).hexdigest(), hashlib.sha256(new).hexdigest()
    for codec in codecs:
        try:
            delta = maker.make_delta(old, new, codec=codec)
        except maker.StructureChanged as exc:
            why = " ".join(str(exc).split())
            result.skipped.append(f"{previous}->{version}: graph structure changed ({why})")
            return built
        except EdgecloudError:
            raise
        except (ValueError, KeyError) as exc:
            raise ConfigError(f"cannot build a {codec!r} delta: {exc}") from exc
        info = maker.delta_info(delta)
        if info.from_sha256 != old_sha or (not info.lossy and info.result_sha256 != new_sha):
            raise UpdateError(
                f"the {codec} delta {previous}->{version} of {model} does not name the files it "
                "joins (from_sha256/result_sha256); refusing to sign it"
            )
        if len(delta) >= len(new):
            result.skipped.append(f"{previous}->{version} {codec}: not smaller than the model")
            continue
        custom = {
            "edgecloud": {
                "kind": "delta", "model": model, "from": previous, "to": version,
                "codec": str(info.codec), "lossy": bool(info.lossy),
                "from_sha256": info.from_sha256, "result_sha256": info.result_sha256,
            }
        }  # fmt: skip
        built[f"{model}/deltas/{previous}-{version}.{codec}.delta"] = (delta, custom)
    return built
