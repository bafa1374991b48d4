"""Request context from the wire: one decoder for HTTP and gRPC, server and gateway.

The context travels as request parameters (``sensitivity``,
``idempotency_key``) and, for the key, as the ``Idempotency-Key`` HTTP header
or ``idempotency-key`` gRPC metadata (the header wins when both are given and
they agree; two different keys are a 400). A carrier given more than once
(two ``Idempotency-Key`` headers, two metadata entries) must repeat one value
(:func:`carried_key`): two different values are a 400 naming both, never
"the last one wins". An empty key is a 400 whatever carries it. An unknown
sensitivity is a 400 on every front end — never decoded as public.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import InvalidRequestError, clip
from ..tensors import DEFAULT_CONTEXT, RequestContext, Sensitivity

__all__ = ["MAX_KEY_LENGTH", "carried_key", "context_parameters", "decode_context"]

#: Longest idempotency key accepted (the IETF draft leaves it to the server;
#: Stripe allows 255 characters).
MAX_KEY_LENGTH = 255


def decode_context(
    params: Mapping[str, Any],
    header_key: str | None = None,
    *,
    carrier: str = "the Idempotency-Key header",
) -> RequestContext:
    """The :class:`RequestContext` of a request's parameters and key header.

    ``header_key`` is the key its ``carrier`` brought (``"the Idempotency-Key
    header"``, ``"the idempotency-key metadata"`` on gRPC), named in errors.

    Raises :class:`InvalidRequestError` for an unknown sensitivity, a key
    that is not a non-empty string of at most :data:`MAX_KEY_LENGTH`
    printable ASCII characters (an empty header or parameter is refused,
    never read as "no key": the caller meant one, and would otherwise get
    a second computation on retry), or a header and parameter naming two keys.
    The message names the header or parameter that is wrong.
    """
    param_key = params.get("idempotency_key")
    sensitivity = params.get("sensitivity")
    if header_key is None and param_key is None and sensitivity is None:
        return DEFAULT_CONTEXT
    if header_key is not None and param_key is not None and header_key != param_key:
        raise InvalidRequestError(
            f"{carrier} {clip(header_key)} and the idempotency_key parameter "
            f"{clip(param_key)} disagree; send one key"
        )
    if header_key is not None:
        key = _key(header_key, carrier)
    else:
        key = _key(param_key, "the idempotency_key parameter")
    return RequestContext(sensitivity=_sensitivity(sensitivity), idempotency_key=key)


def carried_key(values: Iterable[str], carrier: str) -> str | None:
    """The one key that every occurrence of a key carrier names, or None if absent.

    ``values``: each value of a carrier that a request may repeat (the
    ``Idempotency-Key`` headers of an HTTP request, the ``idempotency-key``
    entries of gRPC metadata), in arrival order; ``carrier`` names it for the
    error. Identical repeats are one key; an empty value is returned as is
    (:func:`decode_context` refuses it like an empty parameter).

    Raises :class:`InvalidRequestError` naming the values when they differ.
    """
    distinct = list(dict.fromkeys(values))
    if len(distinct) > 1:
        named = ", ".join(f"{value!r:.80}" for value in distinct)
        raise InvalidRequestError(
            f"{len(distinct)} different idempotency keys in {carrier} ({named}); send one key"
        )
    return distinct[0] if distinct else None


def context_parameters(context: RequestContext) -> dict[str, str]:
    """Parameters a client sends so the server sees ``context`` (the inverse)."""
    params: dict[str, str] = {}
    if context.idempotency_key:
        params["idempotency_key"] = context.idempotency_key
    if context.sensitivity is not Sensitivity.PUBLIC:
        params["sensitivity"] = context.sensitivity.value
    return params


def _sensitivity(value: Any) -> Sensitivity:
    if value is None:
        return Sensitivity.PUBLIC
    if isinstance(value, str) and value in Sensitivity._value2member_map_:
        return Sensitivity(value)
    options = ", ".join(s.value for s in Sensitivity)
    raise InvalidRequestError(f"parameter 'sensitivity' is {clip(value)}; use one of {options}")


def _key(value: Any, carrier: str) -> str | None:
    """``value`` as a key, or None when absent; InvalidRequestError naming ``carrier``."""
    if value is None:
        return None
    rule = f"1 to {MAX_KEY_LENGTH} printable ASCII characters"
    if isinstance(value, str) and not value.strip():
        raise InvalidRequestError(
            f"{carrier} is {'empty' if not value else 'blank'}: an idempotency key is {rule}; "
            "send a key or leave it out"
        )
    if (
        not isinstance(value, str)
        or len(value) > MAX_KEY_LENGTH
        or not value.isascii()
        or not value.isprintable()
    ):
        raise InvalidRequestError(f"{carrier} {value!r:.80} is not an idempotency key: {rule}")
    return value
