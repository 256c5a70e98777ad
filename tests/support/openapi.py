"""Validate JSON bodies against OpenAI's official OpenAPI spec (vendored in tests/data/openai-openapi/).

Compatibility tests check the gateway's responses against the schemas OpenAI publishes rather than
against our own idea of the wire format, so that a missing `logprobs: null` or an error object without
`param` fails a test instead of a client SDK in production::

    schemas = load_openapi_schemas()
    schemas.validate("CreateChatCompletionStreamResponse", chunk)  # raises AssertionError if invalid

The spec is OpenAPI 3.1 (JSON Schema 2020-12) but still writes the 3.0 keyword `nullable: true`, which
JSON Schema validators ignore; `_rewrite_nullable` turns each such schema into
`anyOf: [<schema>, {"type": "null"}]` so that valid bodies such as `"finish_reason": null` pass.
Format checking is off (jsonschema's default), so `format: unixtime` etc. are annotations only.

Base64 embeddings: `Embedding.embedding` is `type: array` of numbers, so the spec *rejects* an
embedding given as a base64 string (what the API returns for `encoding_format: "base64"`). To validate
such a response, decode each `embedding` to floats first (`base64_embeddings_to_floats` does this:
little-endian float32, as OpenAI sends), then validate the result against `CreateEmbeddingResponse`.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import struct
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parent.parent / "data" / "openai-openapi" / "openapi.yaml"
# Base URI the document is registered under; any absolute URI works, it is never fetched.
SPEC_URI = "https://github.com/openai/openai-openapi/openapi.yaml"

# Keywords whose values are data (examples, defaults, enums), not schemas: never rewritten.
_DATA_KEYWORDS = frozenset({"example", "examples", "default", "enum", "const", "x-oaiMeta"})
_EXCERPT_CHARS = 300


def _rewrite_nullable(node: Any) -> Any:
    """Return a copy of `node` with every OpenAPI 3.0 `nullable: true` turned into JSON Schema 2020-12.

    `{..., nullable: true}` becomes `{anyOf: [{...}, {type: "null"}]}`; this works the same whether the
    object has a `type` (a string or already a list), an `enum` (which would otherwise reject null), or
    only a `$ref`. The 3.0 idiom `allOf: [{$ref: X}, {nullable: true}]` makes its parent nullable, since a
    bare `{nullable: true}` inside `allOf` cannot admit null on its own. `nullable: false` is dropped.
    """
    if isinstance(node, list):
        return [_rewrite_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {
        key: (value if key in _DATA_KEYWORDS else _rewrite_nullable(value)) for key, value in node.items()
    }
    nullable = out.pop("nullable", False) is True
    all_of = out.get("allOf")
    if isinstance(all_of, list):
        # After the recursive rewrite a bare `{nullable: true}` member looks like {anyOf: [{}, null]}.
        kept = [member for member in all_of if not _is_bare_nullable(member)]
        if len(kept) != len(all_of):
            nullable = True
            if kept:
                out["allOf"] = kept
            else:
                del out["allOf"]
    if not nullable:
        return out
    return {"anyOf": [out, {"type": "null"}]}


def _is_bare_nullable(member: Any) -> bool:
    """True for a rewritten `{nullable: true}` (optionally with a description): it constrains nothing."""
    if not isinstance(member, dict) or set(member) - {"anyOf", "description"}:
        return False
    any_of = member.get("anyOf")
    return (
        isinstance(any_of, list)
        and len(any_of) == 2
        and isinstance(any_of[0], dict)
        and not set(any_of[0]) - {"description"}
        and any_of[1] == {"type": "null"}
    )


def _excerpt(value: object) -> str:
    """A one-line, length-capped JSON rendering of `value` for assertion messages."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."


class OpenAPISchemas:
    """Validators for `#/components/schemas/<Name>` of one (nullable-rewritten) OpenAPI document."""

    def __init__(self, document: dict[str, Any], base_uri: str = SPEC_URI) -> None:
        self._document = _rewrite_nullable(document)
        self._base_uri = base_uri
        self._schema_names = frozenset(self._document.get("components", {}).get("schemas", {}))
        resource = DRAFT202012.create_resource(self._document)
        self._registry: Registry[Any] = Registry().with_resource(base_uri, resource)
        self._validators: dict[str, Draft202012Validator] = {}

    @property
    def schema_names(self) -> frozenset[str]:
        """Names under `components.schemas`, e.g. to check a name before validating."""
        return self._schema_names

    def validator(self, schema_name: str) -> Draft202012Validator:
        """The (cached) validator for one component schema; `$ref`s resolve through the shared registry."""
        found = self._validators.get(schema_name)
        if found is None:
            if schema_name not in self._schema_names:
                raise KeyError(f"no schema {schema_name!r} in #/components/schemas of {self._base_uri}")
            ref = {"$ref": f"{self._base_uri}#/components/schemas/{schema_name}"}
            found = Draft202012Validator(ref, registry=self._registry)
            self._validators[schema_name] = found
        return found

    def validate(self, schema_name: str, body: object) -> None:
        """Raise AssertionError naming the failing JSON path if `body` does not match the schema."""
        error = best_match(self.validator(schema_name).iter_errors(body))
        if error is None:
            return
        raise AssertionError(
            f"body does not match OpenAPI schema {schema_name} at {error.json_path}: {error.message}\n"
            f"  failing value: {_excerpt(error.instance)}\n"
            f"  body: {_excerpt(body)}"
        )


@functools.cache
def load_openapi_schemas() -> OpenAPISchemas:
    """Parse the vendored spec once per process (the C loader takes ~1s; the pure-Python one ~10s)."""
    with SPEC_PATH.open("rb") as spec_file:
        document = yaml.load(spec_file, Loader=yaml.CSafeLoader)
    return OpenAPISchemas(document)


def base64_embeddings_to_floats(body: dict[str, Any]) -> dict[str, Any]:
    """Copy of an embeddings response with base64 `embedding` strings decoded to float lists.

    The spec only describes float embeddings, so decode before validating a `encoding_format: base64`
    response. Non-string embeddings are left as they are.
    """
    decoded = copy.deepcopy(body)
    for item in decoded.get("data", []):
        if isinstance(item, dict) and isinstance(item.get("embedding"), str):
            raw = base64.b64decode(item["embedding"], validate=True)
            if len(raw) % 4:
                raise AssertionError(f"base64 embedding is {len(raw)} bytes, not a whole number of float32s")
            item["embedding"] = list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return decoded
