"""Litestar's and msgspec's validation messages, rewritten to say what to send instead.

msgspec says `Invalid enum value 'picture'` and `Object contains unknown field `prompt``, and
Litestar names the body `data`; a client needs the allowed values, the fields it may send and the
word "body". The allowed values come from the handler's own types (msgspec's type information),
so every Literal or Enum field is covered, not only the ones we think of.
"""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING, Any

import msgspec.inspect as mi

if TYPE_CHECKING:
    from litestar import Request

BODY = "data"
"""The handler parameter Litestar reads the JSON body into, and names in its messages."""
HINT_ATTRIBUTE = "unknown_field_hint"
"""A request Struct's ClassVar: what to tell a client that sent a field the Struct lacks."""

_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$")
_ENUM = re.compile(r"^Invalid enum value (?P<value>.*)$")


def describe(request: Request[Any, Any, Any], item: dict[str, Any]) -> str:
    """One of Litestar's `extra` items (`key`, `message`, `source`) as one clause of our message."""
    key = item.get("key")
    message = str(item.get("message"))
    in_body = item.get("source") == "body" or key == BODY
    if in_body and key == BODY and message == repr(BODY):  # Litestar's KeyError: there was no body at all
        return "body: missing; send a JSON object (Content-Type: application/json)"
    root = _root_type(request, BODY if in_body else (key or "").split(".", 1)[0])
    if in_body:
        # Inside the body a key is the field's path; the body itself is `data` to Litestar.
        parts = [] if key in (None, BODY) else str(key).split(".")
        label = "body" if key in (None, BODY) else str(key)
    else:
        parts = str(key).split(".")[1:] if key else []
        label = str(key) if key else ""
    if (unknown := _UNKNOWN_FIELD.match(message)) is not None:
        message = _unknown_field(unknown["name"], _type_at(root, parts))
    elif _ENUM.match(message) and (values := _allowed_values(_type_at(root, parts))):
        message = f"{message}; expected one of {', '.join(repr(v) for v in values)}"
    return f"{label}: {message}" if label else message


def _root_type(request: Request[Any, Any, Any], name: str) -> mi.Type | None:
    """The msgspec type of the handler's parameter `name` (the body is `data`)."""
    handler = request.scope.get("route_handler")
    parameters = getattr(getattr(handler, "parsed_fn_signature", None), "parameters", {})
    field = parameters.get(name)
    if field is None:
        return None
    try:
        return mi.type_info(field.annotation)
    except (TypeError, ValueError):  # a type msgspec cannot describe: no values to offer
        return None


def _members(kind: mi.Type | None) -> list[mi.Type]:
    """A type as the alternatives it may be (a union's members, metadata unwrapped)."""
    if kind is None:
        return []
    if isinstance(kind, mi.Metadata):
        return _members(kind.type)
    if isinstance(kind, mi.UnionType):
        return [member for part in kind.types for member in _members(part)]
    return [kind]


def _step(kind: mi.Type, part: str) -> mi.Type | None:
    if isinstance(kind, (mi.StructType, mi.DataclassType, mi.TypedDictType)):
        return next((field.type for field in kind.fields if field.encode_name == part), None)
    if isinstance(kind, mi.DictType):
        return kind.value_type
    if isinstance(kind, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        return kind.item_type
    if isinstance(kind, mi.TupleType) and part.isdigit() and int(part) < len(kind.item_types):
        return kind.item_types[int(part)]
    return None


def _type_at(root: mi.Type | None, parts: list[str]) -> mi.Type | None:
    """The type at a dotted key below `root`; None where the path leaves what the types describe."""
    kind = root
    for part in parts:
        steps = [found for member in _members(kind) if (found := _step(member, part)) is not None]
        if not steps:
            return None
        kind = steps[0] if len(steps) == 1 else mi.UnionType(tuple(steps))
    return kind


def _allowed_values(kind: mi.Type | None) -> list[object]:
    values: list[object] = []
    for member in _members(kind):
        if isinstance(member, mi.LiteralType):
            values += member.values
        elif isinstance(member, mi.EnumType):
            values += [item.value for item in member.cls if isinstance(item, enum.Enum)]
    return values


def _unknown_field(name: str, kind: mi.Type | None) -> str:
    struct = next((m for m in _members(kind) if isinstance(m, (mi.StructType, mi.DataclassType))), None)
    message = f"unknown field `{name}`"
    if struct is None:
        return message
    hint = getattr(struct.cls, HINT_ATTRIBUTE, None)
    fields = ", ".join(f"`{field.encode_name}`" for field in struct.fields)
    return f"{message}; {hint}" if isinstance(hint, str) else f"{message}; the fields are {fields}"
