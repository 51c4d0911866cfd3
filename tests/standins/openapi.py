"""Validating JSON bodies against a provider's official OpenAPI specification, for the stand-in servers.

The specifications live in ``shared/reference/specs/`` beside the repository (CI lays a copy of
``shared/`` next to its clone); ``TIDINGS_SPECS_DIR`` points elsewhere. Usage::

    validator = SchemaValidator(load_spec("vonage-messages-openapi.yml"), "AnyOutboundMessage")
    problems = validator.errors(body)  # [] when the body is valid
    validator.check(body)  # raises SpecViolation

A schema is validated as ``{"$ref": "#/components/schemas/<name>", "components": …}`` (reference §5), with
``OAS30Validator`` for OpenAPI 3.0 documents and ``OAS31Validator`` for 3.1, formats checked. A spec that
needs fixing before it can validate real messages (Meta's ``additionalProperties: false`` in ``allOf``
branches, reference §5) takes a ``transform`` of its ``components``; say in a comment why.
"""

from __future__ import annotations

import copy
import functools
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import (
    OAS30Validator,
    OAS31Validator,
    oas30_format_checker,
    oas31_format_checker,
)

SPECS_DIR_ENV = "TIDINGS_SPECS_DIR"
_REPO = Path(__file__).resolve().parents[2]


def specs_dir() -> Path:
    """Where the official specifications are: ``$TIDINGS_SPECS_DIR``, else ``../shared/reference/specs``."""
    configured = os.environ.get(SPECS_DIR_ENV)
    candidates = [Path(configured)] if configured else []
    candidates.append(_REPO.parent / "shared" / "reference" / "specs")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"no OpenAPI specifications in {', '.join(map(str, candidates))}; set {SPECS_DIR_ENV}"
    )


@functools.cache
def load_spec(name: str) -> Mapping[str, Any]:
    """The parsed specification ``name`` (a file in ``specs_dir()``); cached, do not modify it."""
    with open(specs_dir() / name, encoding="utf-8") as fh:
        spec = yaml.safe_load(fh)
    if not isinstance(spec, dict) or "components" not in spec:
        raise ValueError(f"{name} is not an OpenAPI document with components")
    return spec


class SpecViolation(ValueError):
    """A body that the specification rejects; ``errors`` are readable, one per problem."""

    def __init__(self, schema: str, errors: list[str]) -> None:
        super().__init__(f"not a valid {schema}: " + "; ".join(errors))
        self.schema = schema
        self.errors = errors


def _location(error: ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(body)"


def _leaves(errors: Iterable[ValidationError]) -> list[ValidationError]:
    out: list[ValidationError] = []
    for error in errors:
        out.extend(_leaves(error.context) if error.context else [error])
    return out


def _branch(error: ValidationError) -> tuple[Any, ...]:
    """The schema path up to the innermost ``oneOf``/``anyOf`` alternative that ``error`` belongs to."""
    path = list(error.absolute_schema_path)
    cut = 0
    for i, part in enumerate(path[:-1]):
        if part in ("oneOf", "anyOf") and isinstance(path[i + 1], int):
            cut = i + 2
    return tuple(path[:cut])


def explain(errors: list[ValidationError]) -> list[str]:
    """Readable messages for a failed validation.

    A body that fails a ``oneOf`` of many message types gets an error from every alternative. The
    alternative the body meant is taken to be the one with the fewest errors (ties: the deepest in the body)
    and only its errors are shown, each prefixed by its location in the body.
    """
    leaves = _leaves(errors)
    if not leaves:
        return []
    branches: dict[tuple[Any, ...], list[ValidationError]] = {}
    for leaf in leaves:
        branches.setdefault(_branch(leaf), []).append(leaf)
    closest = min(
        branches.values(),
        key=lambda errs: (len(errs), -max(len(e.absolute_path) for e in errs)),
    )
    return [f"{_location(e)}: {e.message}" for e in closest]


class SchemaValidator:
    """Validates bodies against ``#/components/schemas/<schema>`` of one OpenAPI document. Thread-safe."""

    def __init__(
        self,
        spec: Mapping[str, Any],
        schema: str,
        *,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.schema = schema.rpartition("/")[2]
        components = copy.deepcopy(dict(spec["components"]))
        if transform is not None:
            components = transform(components)
        if self.schema not in components.get("schemas", {}):
            raise KeyError(f"no components/schemas/{self.schema} in the specification")
        document = {"$ref": f"#/components/schemas/{self.schema}", "components": components}
        version = str(spec.get("openapi", ""))
        if version.startswith("3.0"):
            self._validator: Any = OAS30Validator(document, format_checker=oas30_format_checker)
        elif version.startswith("3.1"):
            self._validator = OAS31Validator(document, format_checker=oas31_format_checker)
        else:
            raise ValueError(f"unsupported OpenAPI version {version!r}")
        self._lock = threading.Lock()

    def errors(self, body: Any) -> list[str]:
        """``[]`` when ``body`` is valid, else readable messages (see ``explain``)."""
        with self._lock:
            found = list(self._validator.iter_errors(body))
        return explain(found)

    def is_valid(self, body: Any) -> bool:
        with self._lock:
            return bool(self._validator.is_valid(body))

    def check(self, body: Any) -> None:
        errors = self.errors(body)
        if errors:
            raise SpecViolation(self.schema, errors)


VONAGE_SPEC = "vonage-messages-openapi.yml"


@functools.cache
def vonage_send_validator() -> SchemaValidator:
    """The request body of Vonage ``POST /v1/messages``: ``components/schemas/AnyOutboundMessage``."""
    return SchemaValidator(load_spec(VONAGE_SPEC), "AnyOutboundMessage")


def _without_null_properties(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: _without_null_properties(v) for k, v in node.items() if not (k == "properties" and v is None)
        }
    if isinstance(node, list):
        return [_without_null_properties(v) for v in node]
    return node


def fix_vonage_inbound(spec: Mapping[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The components with ``InboundWhatsApp``: the WhatsApp branch of the ``inbound-message`` webhook's
    body (``x-webhooks``; a ``oneOf`` over the message types), fixed where it cannot validate a real
    message, each fix with why:

    * several ``whatsapp`` objects have an ``allOf`` branch ``{"properties": null, "waba_id": …}`` (a
      mis-indented ``properties``): ``null`` is not a schema, so ``properties: null`` is dropped.
    * ``WhatsAppInboundContact`` requires ``button`` (copied from ``WhatsAppInboundButton``) though it
      describes ``contacts``: it requires ``contacts``.
    * ``WhatsAppInboundButton.button.payload`` is an object (a Flow's), while a template's quick-reply
      button sends its payload as a string (reference §1.6, ``subtype: quick_reply``): both are allowed.
    """

    def transform(components: dict[str, Any]) -> dict[str, Any]:
        body = spec["x-webhooks"]["inbound-message"]["{$request.body#/callback}"]["post"]["requestBody"]
        branches = body["content"]["application/json"]["schema"]["oneOf"]
        whatsapp = next(b for b in branches if b.get("title") == "WhatsApp")
        schemas = components["schemas"]
        contact = schemas["WhatsAppInboundContact"]["allOf"][1]
        contact["required"] = ["contacts"]
        payload = schemas["WhatsAppInboundButton"]["allOf"][1]["properties"]["button"]["properties"][
            "payload"
        ]
        payload.pop("type", None)
        payload["oneOf"] = [{"type": "object"}, {"type": "string"}]
        schemas["InboundWhatsApp"] = _without_null_properties(copy.deepcopy(whatsapp))
        return _without_null_properties(components)

    return transform


@functools.cache
def vonage_inbound_validator() -> SchemaValidator:
    """The body of Vonage's inbound-message webhook for WhatsApp (see ``fix_vonage_inbound``)."""
    spec = load_spec(VONAGE_SPEC)
    return SchemaValidator(spec, "InboundWhatsApp", transform=fix_vonage_inbound(spec))


@functools.cache
def vonage_update_validator() -> SchemaValidator:
    """The WhatsApp body of ``PATCH /v1/messages/{message_uuid}`` (``requestBodies/UpdateMessage``)."""
    spec = load_spec(VONAGE_SPEC)

    def transform(components: dict[str, Any]) -> dict[str, Any]:
        schema = components["requestBodies"]["UpdateMessage"]["content"]["application/json"]["schema"]
        whatsapp = next(b for b in schema["oneOf"] if b.get("title") == "WhatsApp")
        components["schemas"]["UpdateWhatsAppMessage"] = {"type": "object", **whatsapp}
        return components

    return SchemaValidator(spec, "UpdateWhatsAppMessage", transform=transform)
