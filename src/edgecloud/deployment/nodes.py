"""The deployment language's node kinds: one pydantic model per kind, in one registry.

A node is written three ways in YAML, as it always was: the string ``local``,
the name of a remote, or a one-key mapping ``{kind: params}``. Each kind is a
:class:`Node` subclass registered with :func:`node_kind`; the registry
(:data:`KINDS`) is the ONE list of node kinds — error messages, the JSON
Schema, :func:`walk`, the advisor and calibrate read it::

    @node_kind("cascade")
    class CascadeNode(Node):
        small: AnyNode
        large: AnyNode
        threshold: float

        def build(self, ctx: BuildContext, at: str) -> Backend: ...

A field typed :data:`AnyNode` holds a child node: validated through a tagged
union of every registered kind (pydantic's callable ``Discriminator`` on the
mapping's key), so an error inside a child is reported at its YAML path
(``root.guard.inner.cascade.threshold``) and the schema is a clean ``oneOf``.
Kinds must be registered before the first validation (at import time): the
node models build their validators lazily (``defer_build``) from the registry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Protocol, TypeAlias, TypeVar, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PrivateAttr,
    Tag,
    TypeAdapter,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue

if TYPE_CHECKING:
    from pathlib import Path

    from pydantic_core import CoreSchema

    from ..backends.base import Backend
    from ..backends.local import LocalBackend
    from ..backends.remote import RemoteBackend
    from ..errors import ConfigError
    from ..repository import ModelRepository
    from ..routing.outbox import Outbox

__all__ = ["KINDS", "AnyNode", "BuildContext", "Node", "node_kind", "parse_node", "walk"]

#: Every node kind by its YAML key, filled by :func:`node_kind` (registration order).
KINDS: dict[str, type[Node]] = {}

N = TypeVar("N", bound="type[Node]")


class BuildContext(Protocol):
    """What a node's :meth:`Node.build` may use (the deployment being built)."""

    where: str
    """The file being built, for messages (``deployment.yaml``)."""
    outbox: Outbox | None
    """The deployment's outbox (None: the file declares none)."""
    repository: ModelRepository

    def node(self, node: Node, at: str) -> Backend:
        """Build a child node found at YAML path ``at`` (its field's path)."""

    def node_for(self, model: str | None, node: Node, at: str) -> Backend:
        """Build a child whose requests ask for ``model`` (None: the caller's)."""

    def local(
        self, at: str, *, threads: int | None = None, device: str = "cpu", model: str | None = None
    ) -> LocalBackend:
        """The shared on-device backend of one configuration (session cache); ``model``
        (default: the one the node being built serves) is checked by ``check_ready``."""

    def remote(self, name: str, at: str) -> RemoteBackend:
        """The one client of the remote ``name`` (ConfigError naming ``at`` if unknown)."""

    def path(self, value: str) -> Path:
        """A path from the file, relative to the deployment file's folder."""

    def error(self, at: str, message: str) -> ConfigError:
        """``ConfigError('<file>: <at>: <message>')``."""


def node_kind(kind: str) -> Callable[[N], N]:
    """Class decorator: register a :class:`Node` subclass as the YAML kind ``kind``."""

    def register(cls: N) -> N:
        if kind in KINDS:
            raise ValueError(f"node kind {kind!r} is already registered by {KINDS[kind]}")
        cls.kind = kind
        KINDS[kind] = cls
        return cls

    return register


class Node(BaseModel):
    """A node of the deployment tree: the validated parameters of one kind.

    Subclasses set ``leaf`` (a backend that does work itself: the deployment's
    ``_adapt`` hook wraps it) and ``scalar`` (the field a scalar written as the
    mapping's value fills: ``{remote: cloud}`` is ``RemoteNode(name="cloud")``).
    """

    model_config = ConfigDict(
        extra="forbid", strict=True, defer_build=True, use_attribute_docstrings=True
    )

    kind: ClassVar[str] = ""
    leaf: ClassVar[bool] = False
    scalar: ClassVar[str | None] = None
    _written_short: bool | None = PrivateAttr(default=None)

    def build(self, ctx: BuildContext, at: str) -> Backend:
        """The backend of this node; ``at`` is its YAML path. ConfigError on mistakes."""
        raise NotImplementedError

    def short_form(self) -> str | None:
        """The string this node is written as (``local``, a remote's name), if any."""
        return None

    def is_short(self) -> bool:
        """Written (or to be written) as a bare string rather than ``{kind: params}``."""
        if self._written_short is not None:
            return self._written_short
        return self.short_form() is not None

    def path(self, at: str) -> str:
        """The YAML path of this node when it stands at ``at``: ``at`` or ``at.kind``."""
        return at if self.is_short() else f"{at}.{self.kind}"

    def children(self) -> Iterator[tuple[str, Node]]:
        """(field path relative to this node, child) for every child node, in field order."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, Node):
                yield name, value
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, Node):
                        yield f"{name}.{i}", item

    def entry_models(self) -> frozenset[str] | None:
        """The model names a request to this node may carry; None: it passes the caller's
        name on (the names are its leaves'). Default: the union of its children's."""
        named = [m for _, c in self.children() if (m := c.entry_models()) is not None]
        return frozenset().union(*named) if named else None

    @model_validator(mode="wrap")
    @classmethod
    def _from_yaml(cls, raw: Any, handler: Callable[[Any], Node]) -> Node:
        """``local`` / a remote's name / ``{kind: params}`` -> the parameters."""
        written_short: bool | None = None
        if isinstance(raw, str):
            raw, written_short = cls._from_string(raw), True
        elif isinstance(raw, dict) and len(raw) == 1 and cls.kind in raw:
            raw, written_short = raw[cls.kind], False
            if raw is None:
                raw = {}
            elif cls.scalar is not None and not isinstance(raw, dict):
                raw = {cls.scalar: raw}
        node = handler(raw)
        if written_short is not None:
            node._written_short = written_short
        return node

    @classmethod
    def _from_string(cls, value: str) -> dict[str, Any]:
        raise ValueError(f"{cls.kind} is not written as a string")

    def dump(self) -> Any:
        """This node as YAML data, in the form it was written (or its short form): the
        fields that were set, children dumped the same way. ``parse_node`` reads it back."""
        short = self.short_form()
        if self.is_short() and short is not None:
            return short
        params = {
            name: _dump(getattr(self, name))
            for name in type(self).model_fields
            if name in self.model_fields_set
        }
        if self.scalar is not None and set(params) == {self.scalar}:
            return {self.kind: params[self.scalar]}
        return {self.kind: params}

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        params = dict(handler.resolve_ref_schema(handler(core_schema)))
        for key in ("title", "description"):  # said once, on the node
            params.pop(key, None)
        if not params.get("required"):  # every field has a default: `{kind: }` is the kind
            params = {"anyOf": [params, {"type": "null"}]}
        if cls.scalar is not None:
            scalar = params["properties"][cls.scalar]
            params = {"anyOf": [scalar, params]}
        forms: list[JsonSchemaValue] = [{
            "type": "object",
            "properties": {cls.kind: params},
            "required": [cls.kind],
            "additionalProperties": False,
        }]  # fmt: skip
        forms += cls._string_schema()
        schema: JsonSchemaValue = {"oneOf": forms} if len(forms) > 1 else forms[0]
        schema["title"] = cls.__name__
        if cls.__doc__:
            schema["description"] = cls.__doc__.strip().split("\n\n")[0]
        return schema

    @classmethod
    def _string_schema(cls) -> list[JsonSchemaValue]:
        return []


def _dump(value: Any) -> Any:
    if isinstance(value, Node):
        return value.dump()
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, dict):
        return {str(k): _dump(v) for k, v in value.items()}
    return value  # str, number, bool, None: YAML as they are


def _tag(raw: Any) -> str | None:
    """The kind a raw node (or a built one) is: its key, ``local`` or ``remote``."""
    if isinstance(raw, Node):
        return raw.kind
    if isinstance(raw, str):
        return "local" if raw == "local" else "remote"
    if isinstance(raw, dict) and len(raw) == 1:
        (key,) = raw
        return key if key in KINDS else None
    return None


def _check_shape(raw: Any) -> Any:
    """A node's shape, checked before its kind's model sees it (one precise message)."""
    if _tag(raw) is not None:
        return raw
    kinds = ", ".join(KINDS)
    if isinstance(raw, dict) and len(raw) == 1:
        (key,) = raw
        raise ValueError(f"unknown node {key!r}; use one of {kinds}")
    raise ValueError(f"a node is 'local', a remote's name, or one of {{{kinds}: ...}}")


def node_type() -> Any:
    """The tagged union of every registered kind (what a child field validates with)."""
    choices = tuple(Annotated[cls, Tag(kind)] for kind, cls in KINDS.items())
    return Annotated[Union[choices], Discriminator(_tag), BeforeValidator(_check_shape)]  # noqa: UP007


class _NodeRef:
    """A child-node field's type: resolved from the registry when the schema is built."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return handler.generate_schema(node_type())


if TYPE_CHECKING:
    AnyNode: TypeAlias = Node
else:
    AnyNode = _NodeRef


@functools.cache
def _adapter() -> TypeAdapter[Any]:
    return TypeAdapter(node_type())


def parse_node(raw: Any) -> Node:
    """Validate one raw node (``"local"``, ``{"cascade": {...}}``); pydantic ValidationError."""
    node: Node = _adapter().validate_python(raw)
    return node


def walk(tree: Any, at: str = "root") -> Iterator[tuple[str, Node]]:
    """Every node of ``tree`` (a ``DeploymentSpec`` or a :class:`Node`) with its YAML path,
    parents before children: ``("root.guard", GuardNode)``, ``("root.guard.inner.cascade",
    CascadeNode)``, ``("root.guard.inner.cascade.small", LocalNode)``, ..."""
    node: Node = tree if isinstance(tree, Node) else tree.root
    path = node.path(at)
    yield path, node
    for name, child in node.children():
        yield from walk(child, f"{path}.{name}")
