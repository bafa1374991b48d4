from __future__ import annotations

import inspect

import pytest

import edgecloud
from edgecloud import errors


def all_errors() -> list[type[errors.EdgecloudError]]:
    return [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, Exception) and obj.__module__ == errors.__name__
    ]


def test_one_root_and_every_error_is_drawn_in_the_tree() -> None:
    doc = errors.__doc__ or ""
    for cls in all_errors():
        assert issubclass(cls, errors.EdgecloudError)
        assert cls.__name__ in doc, f"{cls.__name__} missing from the tree in errors.py"


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (errors.ShapeMismatchError, 400),
        (errors.UnknownInputError, 400),
        (errors.ConfigError, 400),
        (errors.ModelNotFoundError, 404),
        (errors.ModelLoadError, 503),
        (errors.InferenceError, 500),
    ],
)
def test_status_codes_for_the_server_layer(cls: type[errors.EdgecloudError], status: int) -> None:
    assert cls("x").status_code == status


def test_missing_dependency_names_the_extra() -> None:
    exc = errors.MissingDependencyError("torch", "train", "pruning")
    assert "pip install 'edgecloud[train]'" in exc.message and "'torch'" in exc.message


def test_every_error_is_exported() -> None:
    assert {cls.__name__ for cls in all_errors()} <= set(edgecloud.__all__)


def test_rate_limited_is_a_retryable_unavailable_error() -> None:
    exc = errors.RateLimitedError("slow down")
    assert isinstance(exc, errors.UnavailableError)
    assert (exc.status_code, exc.grpc_code, exc.fallback) == (
        429,
        "RESOURCE_EXHAUSTED",
        "rate-limited",
    )
    assert exc.retry_after_s is None
    assert errors.error_for_http_status(429, "x", "3").retry_after_s == 3.0  # type: ignore[attr-defined]
