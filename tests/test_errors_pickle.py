"""Every exported error survives pickle: errors cross process boundaries
(``serve --workers`` children, multiprocessing pools, the supervisor)."""

from __future__ import annotations

import inspect
import multiprocessing
import pickle

import pytest

import edgecloud
from edgecloud import errors
from edgecloud.tensors import RequestContext, Sensitivity

#: Constructor arguments of the classes whose ``__init__`` is not ``(message)``.
_SPECIAL: dict[str, tuple[tuple[object, ...], dict[str, object]]] = {
    "MissingDependencyError": (("zstandard", "fleet", "deltas"), {}),
    "DeltaError": (("base mismatch",), {"expected_sha256": "a" * 64, "actual_sha256": "b" * 64}),
}


def _error_classes() -> list[type[errors.EdgecloudError]]:
    names = set(errors.__all__) | {n for n in edgecloud.__all__ if n.endswith("Error")}
    names |= {"StructureChanged"}
    classes = []
    for name in sorted(names):
        cls = getattr(edgecloud, name, None) or getattr(errors, name)
        if inspect.isclass(cls) and issubclass(cls, errors.EdgecloudError):
            classes.append(cls)
    return classes


def _build(cls: type[errors.EdgecloudError]) -> errors.EdgecloudError:
    args, kwargs = _SPECIAL.get(cls.__name__, ((f"{cls.__name__} happened",), {}))
    return cls(*args, **kwargs)  # type: ignore[arg-type]


def test_every_exported_class_is_covered() -> None:
    classes = _error_classes()
    assert len(classes) >= 33  # errors.__all__ (31) + the outbox's two
    for cls in classes:
        params = list(inspect.signature(cls.__init__).parameters)[1:]
        if params != ["message"]:
            assert cls.__name__ in _SPECIAL, f"{cls.__name__}{params}: add its arguments"


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_round_trip(cls: type[errors.EdgecloudError]) -> None:
    error = _build(cls)
    error.context = RequestContext(sensitivity=Sensitivity.PERSONAL, idempotency_key="k1")
    if isinstance(error, errors.UnavailableError):
        error.retry_after_s = 7.5
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(error, protocol=protocol))
        assert type(back) is cls
        assert str(back) == str(error) and back.message == error.message
        assert back.args == error.args
        assert back.__dict__ == error.__dict__
        assert back.status_code == cls.status_code and back.grpc_code == cls.grpc_code


def test_attributes_kept() -> None:
    error = errors.MissingDependencyError("zstandard", "fleet", "deltas")
    missing = pickle.loads(pickle.dumps(error))
    assert (missing.module, missing.extra) == ("zstandard", "fleet")
    assert "pip install 'edgecloud[fleet]'" in missing.message
    mismatch = errors.DeltaError("x", expected_sha256="e", actual_sha256="a")
    delta = pickle.loads(pickle.dumps(mismatch))
    assert (delta.expected_sha256, delta.actual_sha256) == ("e", "a")
    # a status the client set from the server's answer (error_for_http_status) stays
    teapot = pickle.loads(pickle.dumps(errors.error_for_http_status(418, "short and stout")))
    assert type(teapot) is errors.InvalidRequestError and teapot.status_code == 418


def _raise_missing() -> None:
    raise errors.MissingDependencyError("zstandard", "fleet", "deltas")


def test_crosses_a_process_boundary() -> None:
    """A pool re-raises the child's error in the parent (pickle both ways)."""
    with (
        multiprocessing.get_context("spawn").Pool(1) as pool,
        pytest.raises(errors.MissingDependencyError, match="edgecloud\\[fleet\\]") as info,
    ):
        pool.apply(_raise_missing)
    assert info.value.extra == "fleet"
