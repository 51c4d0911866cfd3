"""A stand-in for Meta's WhatsApp Cloud API (Graph API v23.0) on 127.0.0.1, for tests and end-to-end runs.

It checks the bearer token, validates every ``POST /{Version}/{Phone-Number-ID}/messages`` body against
Meta's official specification (``components/schemas/Message`` of ``meta-business-messaging-api_v23.0.yaml``),
answers with the documented ``MessageResponsePayload`` or with scripted Graph API errors, serves
``GET /{Version}/{WABA-ID}/message_templates`` in pages, and records every request (thread-safe: the app runs
in uvicorn's thread, the test reads from its own). A send refused for its token or its body consumes no
script. Validation costs a few ms of CPU per send (the ``Message`` oneOf), so 1,000 sends take seconds.

Usage::

    standin = MetaStandIn(templates=[meta_template("welcome", "Hi {{1}}")])
    with standin.serve() as base_url:
        provider = MetaProvider(phone_number_id=standin.phone_number_id,
                                access_token=standin.access_token, base_url=base_url)
        standin.answer_always("15550001111", graph_error(131047))   # every send to that number
        standin.answer_next(graph_error(130429, status=429, retry_after=7))  # the next send, to anyone
        standin.answer_next(graph_error(131056), to="15550002222")  # the next send to that number
        ...
        assert standin.invalid == []            # every body matched the spec
        standin.sent                            # SentMessage(wamid, to, client_ref, body) per accepted send
        status_webhook(standin.sent[0], "delivered")  # a documented webhook payload for it

The specification is found by ``tests.standins.openapi``: ``$TIDINGS_SPECS_DIR`` or
``../shared/reference/specs`` beside the repository.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from tests.standins.openapi import SchemaValidator, load_spec
from tidings.server import bind, serving

# --- the specification ------------------------------------------------------------------------------

META_SPEC = "meta-business-messaging-api_v23.0.yaml"
SCHEMA_PREFIX = "#/components/schemas/"


def _drop_additional_properties_in_all_of(node: Any) -> None:
    """Remove ``additionalProperties: false`` from every ``allOf`` branch, anywhere in ``node``.

    Why (reference §5): several message schemas (``TextMessage``, ``ContactsMessage``, the media messages …)
    are ``allOf: [BaseMessageProperties, {additionalProperties: false, properties: {type, text}}]``. In JSON
    Schema each ``allOf`` branch is checked on its own, so that second branch sees ``messaging_product``,
    ``to`` and ``recipient_type`` as "unexpected" and *every* real message of that type fails. The intent is
    clearly "no properties beyond the message's own"; dropping the keyword from ``allOf`` branches (and only
    there: nested objects such as ``text`` keep theirs) accepts real messages without accepting anything.
    """
    if isinstance(node, dict):
        for branch in node.get("allOf", []):
            if isinstance(branch, dict) and branch.get("additionalProperties") is False:
                del branch["additionalProperties"]
        for value in node.values():
            _drop_additional_properties_in_all_of(value)
    elif isinstance(node, list):
        for value in node:
            _drop_additional_properties_in_all_of(value)


def _fix_button_index_pattern(node: Any) -> None:
    """Replace the button ``index`` pattern ``^[2-6, 11-14]$`` by ``^[0-9]$``.

    The pattern is a broken character class (it matches one character among ``2-6``, ``1``, ``4``, space
    and comma, so it refuses ``"0"``), while the same schema's description says "Position index of the
    button (0-9)" and the spec's own examples use ``index: '0'``. Meta allows up to 10 buttons, 0 to 9.
    """
    if isinstance(node, dict):
        properties = node.get("properties")
        index = properties.get("index") if isinstance(properties, dict) else None
        if isinstance(index, dict) and index.get("pattern") == "^[2-6, 11-14]$":
            index["pattern"] = "^[0-9]$"
        for value in node.values():
            _fix_button_index_pattern(value)
    elif isinstance(node, list):
        for value in node:
            _fix_button_index_pattern(value)


def _resolve_discriminators(node: Any, schemas: Mapping[str, Any], in_all_of: bool = False) -> Any:
    """Where a schema with a ``discriminator.mapping`` is *used* (not extended through ``allOf``), validate
    against the mapped subtypes: ``{"$ref": Base}`` becomes ``{"oneOf": [{"$ref": Sub}, …]}``.

    OpenAPI 3.1 makes ``discriminator`` an annotation, so a validator otherwise checks template components
    and parameters only against their abstract bases (``TemplateComponent``, ``ParameterObject``), whose
    ``parameters`` is any array: ``{"type": "text"}`` without its ``text`` would pass. Each subtype pins
    ``type`` with an ``enum``, so exactly one branch can match. This makes validation stricter, never looser.
    """
    if isinstance(node, list):
        return [_resolve_discriminators(item, schemas, in_all_of) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(SCHEMA_PREFIX) and not in_all_of:
        target = schemas.get(ref.removeprefix(SCHEMA_PREFIX), {})
        mapping = (target.get("discriminator") or {}).get("mapping")
        if (
            isinstance(mapping, dict)
            and "oneOf" not in target
            and "anyOf" not in target
            and all(str(m).removeprefix(SCHEMA_PREFIX) in schemas for m in mapping.values())
        ):
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            return {**siblings, "oneOf": [{"$ref": m} for m in dict.fromkeys(mapping.values())]}
    return {
        key: (
            [_resolve_discriminators(item, schemas, True) for item in value]
            if key == "allOf" and isinstance(value, list)
            else _resolve_discriminators(value, schemas)
        )
        for key, value in node.items()
    }


def fix_meta_components(components: dict[str, Any]) -> dict[str, Any]:
    """The fixes Meta's published ``components`` need before they can validate real send bodies."""
    _drop_additional_properties_in_all_of(components)
    _fix_button_index_pattern(components)
    schemas = components["schemas"]
    components["schemas"] = {name: _resolve_discriminators(s, schemas) for name, s in schemas.items()}
    return components


@functools.cache
def meta_send_validator() -> SchemaValidator:
    """The request body of ``POST /{Version}/{Phone-Number-ID}/messages``: ``components/schemas/Message``."""
    return SchemaValidator(load_spec(META_SPEC), "Message", transform=fix_meta_components)


@functools.cache
def meta_send_validator_as_published() -> SchemaValidator:
    """The same schema without the fixes, to show why they are needed."""
    return SchemaValidator(load_spec(META_SPEC), "Message")


def validate_message(body: Any) -> list[str]:
    """Why ``body`` is not a valid send body; ``[]`` when it is."""
    return meta_send_validator().errors(body)


# The webhook schemas of inbound ``messages[]`` items, by message type (the spec's ``IncomingMessage``
# maps every type to the *send* schemas, so it cannot validate an inbound item; these are the ones Meta's
# webhook reference documents).
INBOUND_SCHEMAS = {
    "text": "TextMessage_2",
    "button": "ButtonMessage",
    "interactive": "InteractiveMessageReply",
    "reaction": "ReactionMessage_1",
    "image": "ImageMessage_1",
    "video": "VideoMessage_1",
    "audio": "AudioMessage_1",
    "document": "DocumentMessage_1",
    "sticker": "StickerMessage_1",
    "location": "LocationMessage_1",
    "contacts": "ContactSharingMessage",
}
_INBOUND_BASE = {
    "type": "object",
    "required": ["from", "id", "timestamp", "type"],
    "properties": {
        "from": {"type": "string"},
        "id": {"type": "string"},
        "timestamp": {"type": "string", "pattern": "^[0-9]+$"},
        "type": {"type": "string"},
        "context": {
            "type": "object",
            "required": ["from", "id"],
            "properties": {"from": {"type": "string"}, "id": {"type": "string"}},
        },
    },
}


def _drop_enum(node: Any, enum: list[str]) -> None:
    if isinstance(node, dict):
        if node.get("enum") == enum:
            del node["enum"]
        for value in node.values():
            _drop_enum(value, enum)
    elif isinstance(node, list):
        for value in node:
            _drop_enum(value, enum)


def fix_meta_inbound_components(components: dict[str, Any]) -> dict[str, Any]:
    """The fixes the inbound webhook schemas need (besides ``fix_meta_components``), with why:

    * each is ``allOf: [BaseMessageProperties, {…}]``, and ``BaseMessageProperties`` is the *send* base
      (``messaging_product``, ``recipient_type`` and ``to`` required), which no inbound item has; its
      examples carry ``from``, ``id`` and ``timestamp`` instead. ``Inbound<Schema>`` replaces that base by
      ``_INBOUND_BASE`` (those three, a Unix-seconds timestamp, and the ``{from, id}`` reply context).
    * ``ContactObject``'s phone ``type`` is an enum of ``HOME`` and ``WORK``, while the spec's own
      shared-contact example (and WhatsApp) sends ``MOBILE`` (and ``CELL``, ``MAIN``, ``IPHONE``): that enum
      is dropped (wherever it is: it only ever types a contact's phone, email or address).
    * ``TextMessage_2.context`` is ``ContextObject``, the "Message business" button's context, which requires
      ``referred_product``: an ordinary reply's ``{from, id}`` context would fail. The base's context is used.
    """
    components = fix_meta_components(components)
    schemas = components["schemas"]
    _drop_enum(schemas, ["HOME", "WORK"])
    for name in INBOUND_SCHEMAS.values():
        own = [dict(branch) for branch in schemas[name]["allOf"][1:]]
        for branch in own:
            properties = dict(branch.get("properties") or {})
            if properties.get("context", {}).get("$ref") == f"{SCHEMA_PREFIX}ContextObject":
                del properties["context"]
            branch["properties"] = properties
        schemas[f"Inbound{name}"] = {"allOf": [_INBOUND_BASE, *own]}
    return components


@functools.cache
def meta_inbound_validator(message_type: str) -> SchemaValidator:
    """An inbound ``messages[]`` item of ``message_type``, as Meta's webhook reference documents it."""
    name = INBOUND_SCHEMAS[message_type]
    return SchemaValidator(load_spec(META_SPEC), f"Inbound{name}", transform=fix_meta_inbound_components)


def inbound_example(message_type: str) -> dict[str, Any] | None:
    """The spec's own example of an inbound item of ``message_type`` (a copy), when it has one; the
    ``UnsupportedMessage`` example for a type Meta does not support."""
    schemas = load_spec(META_SPEC)["components"]["schemas"]
    schema = schemas[INBOUND_SCHEMAS.get(message_type, "UnsupportedMessage")]
    for branch in schema.get("allOf", []):
        if isinstance(branch, dict) and isinstance(branch.get("example"), dict):
            return dict(json.loads(json.dumps(branch["example"])))
    return None


# --- scripted answers -------------------------------------------------------------------------------

# Meta's titles for the codes the tests script (developers.facebook.com/.../support/error-codes).
ERROR_TITLES: dict[int, str] = {
    1: "An unknown error occurred",
    2: "Service temporarily unavailable",
    4: "Application request limit reached",
    100: "Invalid parameter",
    190: "Invalid OAuth access token",
    80007: "Rate limit issues",
    130429: "Rate limit hit",
    131000: "Something went wrong",
    131026: "Message undeliverable",
    131047: "Re-engagement message",
    131049: "This message was not delivered to maintain healthy ecosystem engagement.",
    131050: "User has stopped marketing messages",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
    131057: "Account in maintenance mode",
    132000: "Number of parameters does not match the expected number of params",
    132001: "Template name does not exist in the translation",
}
ERROR_DETAILS: dict[int, str] = {
    130429: "Cloud API message throughput has been reached.",
    131026: "Message Undeliverable.",
    131047: (
        "Message failed to send because more than 24 hours have passed since the customer last replied to "
        "this number."
    ),
    131056: "Message failed to send because there were too many messages sent from this phone number to the "
    "same phone number in a short period of time.",
    132000: "body: number of localizable_params (1) does not match the expected number of params (2)",
}


@dataclass(frozen=True)
class Scripted:
    """One scripted answer: an HTTP status, a JSON or text body, and headers."""

    status: int
    body: dict[str, Any] | str
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> Response:
        if isinstance(self.body, str):
            return PlainTextResponse(self.body, status_code=self.status, headers=self.headers)
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


def graph_error(
    code: int,
    *,
    status: int | None = None,
    message: str | None = None,
    details: str | None = None,
    retry_after: float | None = None,
    is_transient: bool | None = None,
) -> Scripted:
    """A Graph API error (``GraphAPIError``) as Meta sends it: ``{"error": {"message": "(#code) …", …}}``."""
    if status is None:
        status = 401 if code in (0, 190) else 500 if code in (1, 2, 131000) else 400
    error: dict[str, Any] = {
        "message": message or f"(#{code}) {ERROR_TITLES.get(code, 'Error')}",
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": "A" + uuid.uuid4().hex[:22],
    }
    detail = details if details is not None else ERROR_DETAILS.get(code)
    if detail:
        error["error_data"] = {"messaging_product": "whatsapp", "details": detail}
    if is_transient is not None:
        error["is_transient"] = is_transient
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
    return Scripted(status, {"error": error}, headers)


def server_error(status: int = 500, text: str = "Internal Server Error") -> Scripted:
    """A bare 5xx without a Graph error body (a load balancer's answer)."""
    return Scripted(status, text)


# --- recording --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    status: int  # what the stand-in answered
    errors: tuple[str, ...] = ()  # spec violations of a send body


@dataclass(frozen=True)
class SentMessage:
    """A send the stand-in accepted."""

    wamid: str
    to: str
    client_ref: str | None
    body: dict[str, Any]


def meta_template(
    name: str,
    body: str,
    *,
    language: str = "en_US",
    status: str = "APPROVED",
    category: str = "MARKETING",
    template_id: str | None = None,
    header: str | None = None,
) -> dict[str, Any]:
    """A template as ``GET …/message_templates`` lists it."""
    components: list[dict[str, Any]] = []
    if header is not None:
        components.append({"type": "HEADER", "format": "TEXT", "text": header})
    components.append({"type": "BODY", "text": body})
    return {
        "name": name,
        "components": components,
        "language": language,
        "status": status,
        "category": category,
        "id": template_id or str(10**15 + uuid.uuid4().int % 10**15),
    }


def _cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"pos:{position}".encode()).decode().rstrip("=")


def _position(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return int(raw.removeprefix("pos:"))
    except (ValueError, UnicodeDecodeError):
        return -1


class MetaStandIn:
    """The fake Graph API. Configure it, then ``with standin.serve() as base_url: …``."""

    def __init__(
        self,
        *,
        access_token: str = "meta-test-token",
        phone_number_id: str = "106540352242922",
        waba_id: str = "419561257915477",
        api_version: str = "v23.0",
        templates: list[dict[str, Any]] | None = None,
        page_size: int = 25,
        include_next: bool = True,
        delay: float = 0.0,
    ) -> None:
        self.access_token = access_token
        self.phone_number_id = phone_number_id
        self.waba_id = waba_id
        self.api_version = api_version
        self.templates = list(templates or [])
        self.page_size = page_size
        self.include_next = include_next  # False: pages carry only paging.cursors (no paging.next)
        self.delay = delay  # seconds before answering a send (to provoke client time-outs)
        self.base_url: str | None = None
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._sent: list[SentMessage] = []
        self._queue: deque[Scripted] = deque()
        self._queues: dict[str, deque[Scripted]] = {}
        self._always: dict[str, Scripted] = {}
        self._ids = itertools.count(1)
        self.media: dict[str, tuple[bytes, str]] = {}  # media id -> (bytes, MIME type), for fetch_media
        self.read_answers: deque[Scripted] = deque()  # one-shot answers to mark-as-read requests
        meta_send_validator()  # load and compile the spec now, not inside the first request
        self.app = self._build_app()

    # scripting

    def answer_next(self, *answers: Scripted, to: str | None = None) -> None:
        """One-shot answers: for the next sends, or the next sends to ``to`` (with or without '+')."""
        with self._lock:
            queue = self._queue if to is None else self._queues.setdefault(to.removeprefix("+"), deque())
            queue.extend(answers)

    def answer_always(self, to: str, answer: Scripted) -> None:
        """Answer every send to ``to`` with ``answer`` (after its one-shot answers are used up)."""
        with self._lock:
            self._always[to.removeprefix("+")] = answer

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._sent.clear()
            self._queue.clear()
            self._queues.clear()
            self._always.clear()
            self.media.clear()
            self.read_answers.clear()

    # what happened

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def sends(self) -> list[RecordedRequest]:
        """Every ``POST …/messages``, answered or not."""
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/messages")]

    @property
    def sent(self) -> list[SentMessage]:
        with self._lock:
            return list(self._sent)

    @property
    def invalid(self) -> list[RecordedRequest]:
        """Sends whose body did not match the specification."""
        return [r for r in self.requests if r.errors]

    # serving

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Serve on a free loopback port; yields the base URL (use it as ``base_url``)."""
        with serving(self.app, bind()) as url:
            self.base_url = url
            try:
                yield url
            finally:
                self.base_url = None

    def _record(self, request: Request, body: Any, status: int, errors: tuple[str, ...] = ()) -> None:
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self._lock:
            self._requests.append(
                RecordedRequest(
                    request.method,
                    request.url.path,
                    dict(request.query_params),
                    headers,
                    body,
                    status,
                    errors,
                )
            )

    def _authorized(self, request: Request) -> bool:
        expected = f"Bearer {self.access_token}".encode()
        return hmac.compare_digest(request.headers.get("authorization", "").encode(), expected)

    def _scripted_for(self, to: str) -> Scripted | None:
        """The recipient's one-shot answers, its standing answer, the global queue, else None (200)."""
        key = to.removeprefix("+")
        with self._lock:
            own = self._queues.get(key)
            if own:
                return own.popleft()
            if key in self._always:
                return self._always[key]
            return self._queue.popleft() if self._queue else None

    def _build_app(self) -> FastAPI:
        app = FastAPI(title="Meta Graph API stand-in", openapi_url=None, docs_url=None, redoc_url=None)

        @app.post("/{version}/{phone_number_id}/messages")
        async def send(version: str, phone_number_id: str, request: Request) -> Response:
            raw = await request.body()
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            if not self._authorized(request):
                answer = graph_error(190, message="Invalid OAuth access token - Cannot parse access token")
                self._record(request, body, answer.status)
                return answer.response()
            if version != self.api_version or phone_number_id != self.phone_number_id:
                answer = graph_error(
                    100,
                    message=f"Unsupported post request. Object with ID '{phone_number_id}' does not exist",
                )
                self._record(request, body, answer.status)
                return answer.response()
            if isinstance(body, dict) and "status" in body:
                return self._mark_read(request, body)
            errors = tuple(validate_message(body))
            if errors:
                answer = graph_error(100, details="; ".join(errors))
                self._record(request, body, answer.status, errors)
                return answer.response()
            if self.delay:
                await asyncio.sleep(self.delay)
            scripted = self._scripted_for(str(body["to"]))
            if scripted is not None:
                self._record(request, body, scripted.status)
                return scripted.response()
            serial = f"HBgL{body['to']}{next(self._ids):08d}{uuid.uuid4().hex[:12]}"
            wamid = "wamid." + base64.b64encode(serial.encode()).decode()
            with self._lock:
                self._sent.append(
                    SentMessage(wamid, str(body["to"]), body.get("biz_opaque_callback_data"), body)
                )
            self._record(request, body, 200)
            return JSONResponse(
                {
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": body["to"], "wa_id": str(body["to"]).lstrip("+")}],
                    "messages": [{"id": wamid, "message_status": "accepted"}],
                }
            )

        @app.get("/{version}/{waba_id}/message_templates")
        async def templates(version: str, waba_id: str, request: Request) -> Response:
            if not self._authorized(request):
                answer = graph_error(190, message="Invalid OAuth access token - Cannot parse access token")
                self._record(request, None, answer.status)
                return answer.response()
            if version != self.api_version or waba_id != self.waba_id:
                answer = graph_error(100, message=f"Unsupported get request. Object with ID '{waba_id}'")
                self._record(request, None, answer.status)
                return answer.response()
            query = request.query_params
            start = _position(query.get("after"))
            try:
                limit = min(int(query.get("limit", "25")), self.page_size)
            except ValueError:
                limit = self.page_size
            if start < 0 or limit < 1:
                answer = graph_error(100, message="(#100) Invalid cursor or limit")
                self._record(request, None, answer.status)
                return answer.response()
            with self._lock:
                page = self.templates[start : start + limit]
                more = start + limit < len(self.templates)
            fields = [f for f in query.get("fields", "").split(",") if f] or ["name", "status", "language"]
            data = [{k: v for k, v in t.items() if k in fields or k == "id"} for t in page]
            cursors = {"before": _cursor(start), "after": _cursor(start + len(page))}
            paging: dict[str, Any] = {"cursors": cursors}
            if more and self.include_next:
                params = {k: v for k, v in query.items() if k != "after"} | {"after": _cursor(start + limit)}
                paging["next"] = f"{str(request.base_url).rstrip('/')}{request.url.path}?{urlencode(params)}"
            self._record(request, None, 200)
            return JSONResponse({"data": data, "paging": paging})

        @app.get("/{version}/{media_id}")
        async def media_url(version: str, media_id: str, request: Request) -> Response:
            """``retrieveMediaUrl``: the media's URL (here, on this stand-in), MIME type, hash and size."""
            if not self._authorized(request):
                answer = graph_error(190, message="Invalid OAuth access token - Cannot parse access token")
                self._record(request, None, answer.status)
                return answer.response()
            found = self.media.get(media_id)
            if version != self.api_version or found is None:
                answer = graph_error(100, message=f"Unsupported get request. Object with ID '{media_id}'")
                self._record(request, None, answer.status)
                return answer.response()
            content, mime = found
            base = str(request.base_url).rstrip("/")
            self._record(request, None, 200)
            return JSONResponse(
                {
                    "messaging_product": "whatsapp",
                    "url": f"{base}/whatsapp_business/attachments/?mid={media_id}",
                    "mime_type": mime,
                    "sha256": hashlib.sha256(content).hexdigest(),
                    "file_size": str(len(content)),
                    "id": media_id,
                }
            )

        @app.get("/whatsapp_business/attachments/")
        async def download(request: Request) -> Response:
            """``downloadMedia``: the bytes, only with the access token (as lookaside.fbsbx.com does)."""
            found = self.media.get(request.query_params.get("mid", ""))
            if not self._authorized(request) or found is None:
                self._record(request, None, 404)
                return PlainTextResponse("Not Found", status_code=404)
            self._record(request, None, 200)
            return Response(found[0], media_type=found[1])

        return app

    def _mark_read(self, request: Request, body: dict[str, Any]) -> Response:
        """A read receipt: the spec's "Send typing indicator and read receipt" example is its only
        description (``messaging_product``, ``status: read``, ``message_id``; ``typing_indicator``)."""
        errors = tuple(mark_read_errors(body))
        if errors:
            answer = graph_error(100, details="; ".join(errors))
            self._record(request, body, answer.status, errors)
            return answer.response()
        with self._lock:
            scripted = self.read_answers.popleft() if self.read_answers else None
        if scripted is not None:
            self._record(request, body, scripted.status)
            return scripted.response()
        self._record(request, body, 200)
        return JSONResponse({"success": True})


def mark_read_example() -> dict[str, Any]:
    """The spec's example of a read receipt (with a typing indicator)."""
    post = load_spec(META_SPEC)["paths"]["/{Version}/{Phone-Number-ID}/messages"]["post"]
    examples = post["requestBody"]["content"]["application/json"]["examples"]
    return dict(examples["Send typing indicator and read receipt"]["value"])


def mark_read_errors(body: Mapping[str, Any]) -> list[str]:
    """Why ``body`` is not a read receipt shaped as the spec's example; ``[]`` when it is."""
    example = mark_read_example()
    errors = [f"{key}: required" for key in ("messaging_product", "status", "message_id") if key not in body]
    errors += [f"{key}: not in the spec's example" for key in body if key not in example]
    if body.get("messaging_product") != "whatsapp":
        errors.append("messaging_product: must be 'whatsapp'")
    if body.get("status") != "read":
        errors.append("status: must be 'read'")
    if not isinstance(body.get("message_id"), str) or not body.get("message_id"):
        errors.append("message_id: must be a wamid")
    return errors


# --- webhook payloads, as Meta documents them --------------------------------------------------------


def envelope(*changes: dict[str, Any], waba_id: str = "419561257915477") -> dict[str, Any]:
    """``{"object": "whatsapp_business_account", "entry": [{"id", "changes": [...]}]}``."""
    return {"object": "whatsapp_business_account", "entry": [{"id": waba_id, "changes": list(changes)}]}


def _metadata(phone_number_id: str) -> dict[str, str]:
    return {"display_phone_number": "15550783881", "phone_number_id": phone_number_id}


def status_change(
    wamid: str,
    status: str,
    *,
    recipient: str,
    client_ref: str | None = None,
    timestamp: int | None = None,
    error_code: int | None = None,
    phone_number_id: str = "106540352242922",
) -> dict[str, Any]:
    """A ``messages`` change with one ``statuses[]`` item (``errors`` on ``failed``)."""
    item: dict[str, Any] = {
        "id": wamid,
        "status": status,
        "timestamp": str(timestamp if timestamp is not None else int(time.time())),
        "recipient_id": recipient.lstrip("+"),
    }
    if status in ("sent", "delivered", "read"):
        item["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "marketing"}
    if client_ref is not None:
        item["biz_opaque_callback_data"] = client_ref
    if status == "failed":
        code = error_code or 131026
        item["errors"] = [
            {
                "code": code,
                "title": ERROR_TITLES.get(code, "Error"),
                "message": ERROR_TITLES.get(code, "Error"),
                "error_data": {"details": ERROR_DETAILS.get(code, "")},
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
            }
        ]
    value = {"messaging_product": "whatsapp", "metadata": _metadata(phone_number_id), "statuses": [item]}
    return {"field": "messages", "value": value}


def status_webhook(sent: SentMessage, status: str, **kwargs: Any) -> dict[str, Any]:
    """The status webhook Meta would send for a message the stand-in accepted."""
    return envelope(
        status_change(sent.wamid, status, recipient=sent.to, client_ref=sent.client_ref, **kwargs)
    )


def text_reply_change(
    sender: str,
    body: str,
    *,
    name: str = "Sheena Nelson",
    context_id: str | None = None,
    wamid: str | None = None,
    timestamp: int | None = None,
    phone_number_id: str = "106540352242922",
) -> dict[str, Any]:
    """A ``messages`` change carrying one inbound text message (and its ``contacts`` profile)."""
    message: dict[str, Any] = {
        "from": sender.lstrip("+"),
        "id": wamid or "wamid." + uuid.uuid4().hex,
        "timestamp": str(timestamp if timestamp is not None else int(time.time())),
        "type": "text",
        "text": {"body": body},
    }
    if context_id is not None:
        message["context"] = {"from": "15550783881", "id": context_id}
    value = {
        "messaging_product": "whatsapp",
        "metadata": _metadata(phone_number_id),
        "contacts": [{"profile": {"name": name}, "wa_id": sender.lstrip("+")}],
        "messages": [message],
    }
    return {"field": "messages", "value": value}


def signed(payload: Mapping[str, Any], app_secret: str) -> tuple[bytes, dict[str, str]]:
    """The raw body and the headers of a webhook POST Meta would make for ``payload``."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    signature = "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/json", "X-Hub-Signature-256": signature}
