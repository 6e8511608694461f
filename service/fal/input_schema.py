"""A model's input schema, as fal publishes it, and the check of a job's input against it.

fal serves each endpoint's OpenAPI at `https://fal.ai/api/openapi/queue/openapi.json?endpoint_id=<id>`:
the POST to the endpoint's own path takes a request body whose schema is a `$ref` into
`components.schemas` (`FluxDevInput` and the like), with `required`, `default`, `enum`,
`minimum`/`maximum`, and `anyOf` for fields that take one of several shapes (`image_size`: a preset
name or `{width, height}`).

The check is a small subset of JSON Schema, enough for what fal's schemas use: type, required,
enum, anyOf/oneOf, minimum/maximum (exclusive too), minLength/maxLength, minItems/maxItems, items,
properties and `$ref` into components. Fields the schema does not name are let through: fal's apps
(pydantic models) ignore them, and the emulator's own options (`fal_emulator`) travel that way.
A string field that takes a file (a URL) also takes `upload:<id>`, replaced by a URL at submit.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

FileKind = Literal["image", "video", "audio"]
_TYPE_WORDS = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
               "array": "a list", "object": "an object", "null": "null"}
URL_PREFIXES = ("http://", "https://", "data:", "upload:")


class ModelSchema(msgspec.Struct, frozen=True):
    """The input schema of one endpoint, with the components its `$ref`s point into."""

    model_id: str
    input: dict[str, Any]
    components: dict[str, Any]


class InputField(msgspec.Struct, frozen=True, kw_only=True):
    """One field of a model's input, enough to draw a form."""

    name: str
    type: str | None
    """JSON Schema's type; for a field of several shapes, the one with choices (`image_size`: string)."""
    required: bool
    default: Any = None
    enum: list[Any] | None = None
    description: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    file: FileKind | None = None
    """The field takes a file, by URL or `upload:<id>`: of this kind."""


def input_schema(document: Any, model_id: str) -> ModelSchema:
    """The input schema in a fal OpenAPI document: that of the POST to `/{model_id}` (else the only
    POST with a body). ValueError when the document has none."""
    if not isinstance(document, dict):
        raise ValueError("the schema document is not a JSON object")
    components = (document.get("components") or {}).get("schemas") or {}
    paths = document.get("paths") or {}
    posts = [(path, item["post"]) for path, item in paths.items() if isinstance(item, dict) and isinstance(item.get("post"), dict)]
    posts.sort(key=lambda pair: pair[0] != f"/{model_id}")
    for _, post in posts:
        body = (((post.get("requestBody") or {}).get("content") or {}).get("application/json") or {}).get("schema")
        if isinstance(body, dict):
            resolved = _resolve(body, components)
            if resolved.get("type", "object") == "object":
                return ModelSchema(model_id=model_id, input=resolved, components=components)
    raise ValueError(f"the schema document names no input for {model_id}")


def _resolve(node: Any, components: dict[str, Any]) -> dict[str, Any]:
    """`node` with its `$ref` (into components.schemas) replaced by what it names, siblings kept."""
    seen = 0
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and seen < 16:
        target = components.get(node["$ref"].rsplit("/", 1)[-1])
        node = {**(target if isinstance(target, dict) else {}), **{k: v for k, v in node.items() if k != "$ref"}}
        seen += 1
    return node if isinstance(node, dict) else {}


def file_kind(name: str, node: dict[str, Any]) -> FileKind | None:
    """Which kind of file a field takes, from fal's naming (`image_url`, `video_urls`, `audio_url`)."""
    lowered = name.lower()
    if not (lowered.endswith(("_url", "_urls")) or node.get("format") == "uri"):
        return None
    kinds: tuple[FileKind, ...] = ("image", "video", "audio")
    return next((kind for kind in kinds if kind in lowered), None)


def _variants(node: dict[str, Any], components: dict[str, Any]) -> list[dict[str, Any]]:
    options = node.get("anyOf") or node.get("oneOf")
    return [_resolve(option, components) for option in options] if isinstance(options, list) else []


def _type_of(node: dict[str, Any], components: dict[str, Any]) -> str | None:
    variants = [v for v in _variants(node, components) if v.get("type") != "null"]
    with_choices = [v for v in variants if v.get("enum")]
    chosen = (with_choices or variants or [node])[0]
    kind = chosen.get("type")
    if kind is None and chosen.get("enum"):
        kind = _type_name(chosen["enum"][0])
    return kind if isinstance(kind, str) else None


def fields(schema: ModelSchema) -> list[InputField]:
    """The input's fields, in fal's order (`x-fal-order-properties`) when it gives one."""
    properties: dict[str, Any] = schema.input.get("properties") or {}
    order = [name for name in schema.input.get("x-fal-order-properties") or [] if name in properties]
    order += [name for name in properties if name not in order]
    required = set(schema.input.get("required") or [])
    found: list[InputField] = []
    for name in order:
        node = _resolve(properties[name], schema.components)
        variants = _variants(node, schema.components)
        enum = node.get("enum") or next((v["enum"] for v in variants if v.get("enum")), None)
        bounds = next((v for v in [node, *variants] if "minimum" in v or "maximum" in v), {})
        description = node.get("description")
        found.append(InputField(
            name=name, type=_type_of(node, schema.components), required=name in required, default=node.get("default"),
            enum=list(enum) if enum else None, description=description if isinstance(description, str) else None,
            minimum=bounds.get("minimum"), maximum=bounds.get("maximum"), file=file_kind(name, node)))
    return found


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _is_type(value: Any, kind: str) -> bool:
    actual = _type_name(value)
    return actual == kind or (kind == "number" and actual == "integer")


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else msgspec.json.encode(value).decode()
    return text if len(text) <= 60 else text[:57] + "..."


def describe(node: dict[str, Any], components: dict[str, Any], name: str = "") -> str:
    """What a schema node takes, in words: `a string`, `an integer from 1 to 4`, `one of 'a', 'b'`."""
    node = _resolve(node, components)
    variants = [v for v in _variants(node, components) if v.get("type") != "null"]
    if variants:
        return " or ".join(describe(v, components, name) for v in variants)
    if node.get("enum"):
        return "one of " + ", ".join(_show(v) for v in node["enum"])
    kind = node.get("type")
    words = _TYPE_WORDS.get(kind, "a value") if isinstance(kind, str) else "a value"
    if kind == "string" and file_kind(name, node):
        return f"a URL of a{'n' if file_kind(name, node) == 'image' else ''} {file_kind(name, node)}, or upload:<id>"
    if kind == "object" and node.get("properties"):
        words += " {" + ", ".join(node["properties"]) + "}"
    if "minimum" in node and "maximum" in node:
        return f"{words} from {node['minimum']:g} to {node['maximum']:g}"
    bounds = [f"{word} {node[key]:g}" for key, word in (("minimum", "at least"), ("exclusiveMinimum", "above"),
                                                         ("maximum", "at most"), ("exclusiveMaximum", "below"))
              if isinstance(node.get(key), (int, float))]
    return f"{words} {', '.join(bounds)}" if bounds else words


def problems(schema: ModelSchema, value: dict[str, Any]) -> list[str]:
    """What is wrong with a job's input, each naming its field (`input.prompt: …`); empty when fine."""
    return _Checker(schema).object(schema.input, value, "input")


class _Checker:
    def __init__(self, schema: ModelSchema) -> None:
        self.model_id = schema.model_id
        self.components = schema.components

    def object(self, node: dict[str, Any], value: dict[str, Any], path: str) -> list[str]:
        properties: dict[str, Any] = node.get("properties") or {}
        found: list[str] = []
        for name in node.get("required") or []:
            if name not in value:
                found.append(f"{path}.{name}: required by {self.model_id} "
                             f"({describe(properties.get(name) or {}, self.components, name)})")
        for name, item in value.items():
            if name in properties:
                problem = self.value(_resolve(properties[name], self.components), item, f"{path}.{name}", name)
                if problem:
                    found.append(problem)
        return found

    def value(self, node: dict[str, Any], value: Any, path: str, name: str) -> str | None:
        variants = _variants(node, self.components)
        if variants:
            return self._one_of(node, variants, value, path, name)
        kind = node.get("type")
        if isinstance(kind, str) and not _is_type(value, kind):
            return f"{path}: {_show(value)} is not {describe(node, self.components, name)}"
        if "enum" in node and value not in node["enum"]:
            return f"{path}: {_show(value)} is not one of {', '.join(_show(v) for v in node['enum'])}"
        return self._within(node, value, path, name)

    def _one_of(self, node: dict[str, Any], variants: list[dict[str, Any]], value: Any, path: str,
                name: str) -> str | None:
        found = [self.value(variant, value, path, name) for variant in variants]
        if None in found:
            return None
        # The variant of the value's own type says most (`'huge' is not one of …`).
        for variant, problem in zip(variants, found, strict=True):
            if variant.get("type") and _is_type(value, variant["type"]):
                return problem
        return f"{path}: {_show(value)} is not {describe(node, self.components, name)}"

    def _within(self, node: dict[str, Any], value: Any, path: str, name: str) -> str | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return self._number(node, value, path, name)
        if isinstance(value, str):
            if file_kind(name, node) and not value.startswith(URL_PREFIXES):
                return f"{path}: {_show(value)} is not {describe(node, self.components, name)}"
            if len(value) > node.get("maxLength", len(value)) or len(value) < node.get("minLength", 0):
                return f"{path}: {len(value)} characters; {self.model_id} takes " \
                       f"{node.get('minLength', 0)} to {node.get('maxLength', 'any number of')} characters"
        if isinstance(value, list):
            if len(value) > node.get("maxItems", len(value)) or len(value) < node.get("minItems", 0):
                return f"{path}: {len(value)} items; {self.model_id} takes " \
                       f"{node.get('minItems', 0)} to {node.get('maxItems', 'any number of')}"
            items = _resolve(node.get("items") or {}, self.components)
            return next((p for i, item in enumerate(value) if (p := self.value(items, item, f"{path}[{i}]", name))), None)
        if isinstance(value, dict) and node.get("type") == "object":
            found = self.object(node, value, path)
            return found[0] if found else None
        return None

    def _number(self, node: dict[str, Any], value: float, path: str, name: str) -> str | None:
        too_low = ("minimum" in node and value < node["minimum"]) or (
            "exclusiveMinimum" in node and value <= node["exclusiveMinimum"])
        too_high = ("maximum" in node and value > node["maximum"]) or (
            "exclusiveMaximum" in node and value >= node["exclusiveMaximum"])
        if too_low or too_high:
            return f"{path}: {_show(value)} is out of range; {self.model_id} takes {describe(node, self.components, name)}"
        return None
