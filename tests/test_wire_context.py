"""An empty idempotency key is refused wherever it comes from, naming its carrier."""

from __future__ import annotations

import pytest

from edgecloud import InvalidRequestError, RequestContext
from edgecloud.wire.context import decode_context


@pytest.mark.parametrize("value", ["", " ", "\t"])
@pytest.mark.parametrize(
    ("carrier", "decode"),
    [
        ("the Idempotency-Key header", lambda v: decode_context({}, v)),
        (
            "the idempotency-key metadata",
            lambda v: decode_context({}, v, carrier="the idempotency-key metadata"),
        ),
        ("the idempotency_key parameter", lambda v: decode_context({"idempotency_key": v})),
    ],
)
def test_empty_or_blank_keys_are_refused_naming_the_carrier(
    value: str, carrier: str, decode: object
) -> None:
    with pytest.raises(InvalidRequestError, match=f"^{carrier} is (empty|blank)") as info:
        decode(value)  # type: ignore[operator]
    assert info.value.status_code == 400


@pytest.mark.parametrize("value", [1, True, ["k"], "é", "x" * 256, "a\nb"])
def test_other_bad_parameter_keys_name_the_parameter(value: object) -> None:
    with pytest.raises(InvalidRequestError, match="^the idempotency_key parameter .* is not an"):
        decode_context({"idempotency_key": value})


def test_good_keys_pass() -> None:
    assert decode_context({}, "k-1").idempotency_key == "k-1"
    assert decode_context({"idempotency_key": "k-1"}, "k-1").idempotency_key == "k-1"
    assert decode_context({}).idempotency_key is None


def test_the_python_api_refuses_an_empty_key_too() -> None:
    """``RequestContext(idempotency_key="")`` was silently unkeyed: the host ran it
    unkeyed, RemoteBackend sent no header, the outbox made up a key."""
    with pytest.raises(InvalidRequestError, match="non-empty string or None"):
        RequestContext(idempotency_key="")
    assert RequestContext(idempotency_key=None).idempotency_key is None
