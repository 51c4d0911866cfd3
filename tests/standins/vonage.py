"""A stand-in for the Vonage Messages API v1 on loopback: ``POST /v1/messages``.

Every request is authenticated (a Bearer RS256 JWT checked with the application's public key, or Basic
``api_key:api_secret``), its body validated against ``components/schemas/AnyOutboundMessage`` of the
official specification (plus the documented rules the spec leaves out, see ``documented_rule_errors``),
recorded, and answered 202 ``{"message_uuid": …}`` or as scripted::

    private_pem, public_pem = rsa_key_pair()
    standin = VonageStandIn(application_id=APP_ID, public_key=public_pem, api_key="k", api_secret="s")
    standin.answer_next(rate_limited(7))                    # the next request, whoever it is for
    standin.answer_next(problem(1300), to="447700900001")   # the next request for this number
    standin.answer_always("447700900002", problem(1340))    # every request for this number
    with standin.serve() as base_url:
        provider = VonageProvider(sender="447700900000", base_url=base_url,
                                  application_id=APP_ID, private_key=private_pem)
        ...
    standin.accepted, standin.invalid, standin.counts()     # what it saw (thread-safe snapshots)

Answers are taken in this order: the recipient's one-shot queue, the recipient's standing answer, the
global queue, then ``default`` (202). A request refused for auth or for its body consumes no script.
Validating against ``AnyOutboundMessage`` (a ``oneOf`` over every channel and message type) costs about
5-15 ms of CPU per request, so 1,000 sends take some seconds; the stand-in serves one request at a time.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import re
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.standins.openapi import SchemaValidator, vonage_send_validator, vonage_update_validator
from tidings.server import bind, serving

MESSAGES_PATH = "/v1/messages"
MEDIA_PATH = "/v3/media/"
_ERRORS_URL = "https://developer.vonage.com/api-errors/messages"

# Vonage's problem titles and details for the codes tests script (reference §1.4 and §1.5, spec x-errors).
PROBLEMS: dict[int, tuple[str, str]] = {
    1000: (
        "Throttled",
        "You have exceeded the submission capacity allowed on this account. Please wait and retry",
    ),
    1022: ("Invalid template", "Invalid template or template parameters"),
    1060: ("Invalid client reference", "The client reference can be a string of up to 100 characters."),
    1100: ("Unsupported channel", "The specified channel is not supported."),
    1120: ("Invalid sender", "The `from` parameter is invalid for the given channel."),
    1130: ("Invalid recipient", "The `to` parameter is invalid for the given channel."),
    1150: ("Invalid params", "The value of one or more parameters is invalid."),
    1300: ("Not part of the provider network", "The recipient is not a WhatsApp user."),
    1331: ("Provider error", "Provider error, retry in a few minutes."),
    1340: (
        "Outside of the allowed window",
        "Free-form messages can only be sent within 24 hours of the last reply.",
    ),
}


def rsa_key_pair(bits: int = 2048) -> tuple[str, str]:
    """A fresh ``(private_pem, public_pem)`` pair, as a Vonage application's key pair."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem


@dataclass(frozen=True)
class Answer:
    """What the stand-in answers. ``body=None`` with a 2xx status means ``{"message_uuid": <new uuid4>}``;
    ``delay`` seconds pass before the answer (to make a client time out)."""

    status: int = 202
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


def accepted(delay: float = 0.0) -> Answer:
    return Answer(202, delay=delay)


def problem(
    code: int, status: int = 422, *, detail: str | None = None, headers: Mapping[str, str] | None = None
) -> Answer:
    """An RFC 7807 problem ``…/api-errors/messages#<code>`` as Vonage shapes it."""
    title, default_detail = PROBLEMS.get(code, (f"Error {code}", f"Error {code}"))
    body = {
        "type": f"{_ERRORS_URL}#{code}",
        "title": title,
        "detail": detail or default_detail,
        "instance": uuid.uuid4().hex,
    }
    return Answer(status, body, dict(headers or {}))


def rate_limited(retry_after: int = 15) -> Answer:
    """429 as the spec documents it, with ``Retry-After`` seconds and the X-RateLimit headers."""
    body = {
        "title": "Rate Limit Hit",
        "type": "https://developer.vonage.com/api-errors#rate-limit",
        "detail": "Please wait, then retry your request",
        "instance": uuid.uuid4().hex,
    }
    headers = {
        "Retry-After": str(retry_after),
        "X-RateLimit-Limit": "30",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(time.time()) + retry_after),
    }
    return Answer(429, body, headers)


def server_error(status: int = 500) -> Answer:
    body = {
        "type": "https://developer.vonage.com/api-errors#internal-error",
        "title": "Internal Error",
        "detail": "An error occurred while processing the request.",
        "instance": uuid.uuid4().hex,
    }
    return Answer(status, body)


def unauthorized() -> Answer:
    body = {
        "type": "https://developer.nexmo.com/api-errors#unauthorized",
        "title": "Unauthorized",
        "detail": "You did not provide correct credentials.",
        "instance": uuid.uuid4().hex,
    }
    return Answer(401, body)


def low_balance() -> Answer:
    body = {
        "type": "https://developer.nexmo.com/api-errors/#low-balance",
        "title": "Low balance",
        "detail": "This request could not be performed due to your account balance being low.",
        "instance": uuid.uuid4().hex,
    }
    return Answer(402, body)


@dataclass(frozen=True)
class Recorded:
    """One request the stand-in received, and what it answered."""

    seq: int
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    raw: bytes
    body: Any  # the parsed JSON, None when it was not JSON
    auth: str | None  # "jwt" or "basic" when the credentials were good, else None
    claims: dict[str, Any] | None  # the verified JWT claims
    errors: list[str]  # why the body was refused (spec or documented rules); [] when it was valid
    status: int
    message_uuid: str | None
    received_at: float
    peer: str  # the client's host:port, to see connections being reused

    @property
    def to(self) -> str | None:
        return self.body.get("to") if isinstance(self.body, dict) else None

    @property
    def client_ref(self) -> str | None:
        return self.body.get("client_ref") if isinstance(self.body, dict) else None


_DIGITS_7_15 = re.compile(r"^\d{7,15}$")
_BSUID = re.compile(r"^[A-Z]{2}\.\d+$")


def documented_rule_errors(body: Mapping[str, Any]) -> list[str]:
    """Rules Vonage documents for WhatsApp that the spec does not encode (reference §1.3): ``to`` is E.164
    digits without '+' (7 to 15, the spec's ``ToNumber``) or a BSUID, ``from`` is digits, and
    ``client_ref`` has at most 100 characters."""
    if body.get("channel") != "whatsapp":
        return []
    errors = []
    to = body.get("to")
    if isinstance(to, str) and not (_DIGITS_7_15.match(to) or _BSUID.match(to)):
        errors.append(f"to: {to!r} is not E.164 digits without '+' (7 to 15) nor a BSUID")
    sender = body.get("from")
    if isinstance(sender, str) and not sender.isdigit():
        errors.append(f"from: {sender!r} is not a number in digits")
    ref = body.get("client_ref")
    if isinstance(ref, str) and len(ref) > 100:
        errors.append(f"client_ref: {len(ref)} characters, more than 100")
    return errors


class VonageStandIn:
    """The Messages API ``POST /v1/messages`` on loopback, strict about auth and bodies. Thread-safe."""

    def __init__(
        self,
        *,
        application_id: str | None = None,
        public_key: str | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
        validator: SchemaValidator | None = None,
        documented_rules: bool = True,
    ) -> None:
        if not ((application_id and public_key) or (api_key and api_secret)):
            raise ValueError("the stand-in needs application_id + public_key and/or api_key + api_secret")
        self.application_id = application_id
        self.public_key = public_key
        self._basic = (
            base64.b64encode(f"{api_key}:{api_secret}".encode()).decode() if api_key and api_secret else None
        )
        self.validator = validator or vonage_send_validator()
        self.documented_rules = documented_rules
        self.default = accepted()
        self.base_url: str | None = None
        self._lock = threading.Lock()
        self._records: list[Recorded] = []
        self._queue: deque[Answer] = deque()
        self._queues: dict[str, deque[Answer]] = {}
        self._always: dict[str, Answer] = {}
        self.media: dict[str, tuple[bytes, str]] = {}  # /v3/media/<id> -> (bytes, MIME type)
        self.secure_media = True  # "Secure Inbound Media": a media GET needs the credentials
        self.update_answers: deque[Answer] = deque()  # one-shot answers to PATCH /v1/messages/<uuid>
        self.app = self._build_app()

    # --- scripting --------------------------------------------------------------------------------------

    def answer_next(self, *answers: Answer, to: str | None = None) -> None:
        """Queue one-shot answers: for the next requests, or the next requests for ``to`` (digits, no '+')."""
        with self._lock:
            queue = self._queue if to is None else self._queues.setdefault(to.removeprefix("+"), deque())
            queue.extend(answers)

    def answer_always(self, to: str, answer: Answer) -> None:
        """Answer every request for ``to`` with ``answer`` (after its one-shot queue is used up)."""
        with self._lock:
            self._always[to.removeprefix("+")] = answer

    def reset(self) -> None:
        """Forget the records and the script."""
        with self._lock:
            self._records.clear()
            self._queue.clear()
            self._queues.clear()
            self._always.clear()
            self.media.clear()
            self.update_answers.clear()
        self.secure_media = True

    def _next_answer(self, to: Any) -> Answer:
        with self._lock:
            key = to if isinstance(to, str) else ""
            own = self._queues.get(key)
            if own:
                return own.popleft()
            if key in self._always:
                return self._always[key]
            if self._queue:
                return self._queue.popleft()
            return self.default

    # --- what it saw ------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._records)

    @property
    def accepted(self) -> list[Recorded]:
        """Requests answered with a message_uuid."""
        return [r for r in self.requests if r.message_uuid is not None]

    @property
    def invalid(self) -> list[Recorded]:
        """Requests whose body the spec (or a documented rule) refused."""
        return [r for r in self.requests if r.errors]

    def counts(self) -> Counter[int]:
        """How many requests were answered with each HTTP status."""
        return Counter(r.status for r in self.requests)

    def _record(self, request: Request, raw: bytes, **kwargs: Any) -> Recorded:
        with self._lock:
            record = Recorded(
                seq=len(self._records) + 1,
                method=request.method,
                path=request.url.path,
                headers={k.lower(): v for k, v in request.headers.items()},
                raw=raw,
                received_at=time.time(),
                peer=f"{request.client.host}:{request.client.port}" if request.client else "",
                **kwargs,
            )
            self._records.append(record)
            return record

    # --- serving ----------------------------------------------------------------------------------------

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve on ``host:port`` (0: a free port) until the block ends; yields the base URL."""
        sock = bind(host, port)
        # Without TCP_NODELAY (inherited by accepted sockets on Linux) every keep-alive request waits ~40 ms
        # for a delayed ACK; tidings.server.bind does not set it.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with serving(self.app, sock) as url:
            self.base_url = url
            try:
                yield url
            finally:
                self.base_url = None

    def _authenticate(self, header: str) -> tuple[str | None, dict[str, Any] | None]:
        scheme, _, credentials = header.partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer" and self.public_key and credentials:
            try:
                claims = jwt.decode(
                    credentials,
                    self.public_key,
                    algorithms=["RS256"],
                    options={"require": ["application_id", "iat", "jti", "exp"]},
                )
            except jwt.PyJWTError:
                return None, None
            if claims.get("application_id") != self.application_id:
                return None, None
            return "jwt", claims
        if scheme.lower() == "basic" and self._basic and hmac.compare_digest(credentials, self._basic):
            return "basic", None
        return None, None

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        async def handle(request: Request) -> Response:
            raw = await request.body()
            if request.url.path.startswith(MEDIA_PATH) and request.method == "GET":
                return self._media(request, raw)
            if request.url.path.startswith(MESSAGES_PATH + "/") and request.method == "PATCH":
                return self._update(request, raw)
            if request.url.path != MESSAGES_PATH or request.method != "POST":
                self._record(
                    request, raw, body=None, auth=None, claims=None, errors=[], status=404, message_uuid=None
                )
                return _problem_response(
                    404, "https://developer.vonage.com/api-errors#not-found", "Not Found"
                )
            auth, claims = self._authenticate(request.headers.get("authorization", ""))
            body: Any = None
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            if auth is None:
                self._record(
                    request, raw, body=body, auth=None, claims=None, errors=[], status=401, message_uuid=None
                )
                return _answer(unauthorized(), None)
            if not isinstance(body, dict):
                errors = ["the request body did not contain a JSON object"]
                self._record(
                    request,
                    raw,
                    body=body,
                    auth=auth,
                    claims=claims,
                    errors=errors,
                    status=422,
                    message_uuid=None,
                )
                return _problem_response(
                    422,
                    "https://developer.vonage.com/api-errors#invalid-json",
                    "The request body did not contain valid JSON",
                    errors[0],
                )
            errors = self.validator.errors(body)
            if not errors and self.documented_rules:
                errors = documented_rule_errors(body)
            if errors:
                self._record(
                    request,
                    raw,
                    body=body,
                    auth=auth,
                    claims=claims,
                    errors=errors,
                    status=422,
                    message_uuid=None,
                )
                return _problem_response(
                    422,
                    f"{_ERRORS_URL}#1150",
                    "Invalid params",
                    "; ".join(errors),
                    invalid_parameters=[
                        {"name": e.partition(": ")[0], "reason": e.partition(": ")[2]} for e in errors
                    ],
                )
            answer = self._next_answer(body.get("to"))
            message_uuid = str(uuid.uuid4()) if 200 <= answer.status < 300 and answer.body is None else None
            self._record(
                request,
                raw,
                body=body,
                auth=auth,
                claims=claims,
                errors=[],
                status=answer.status,
                message_uuid=message_uuid,
            )
            if answer.delay:
                await asyncio.sleep(answer.delay)
            return _answer(answer, message_uuid)

        return app

    def _media(self, request: Request, raw: bytes) -> Response:
        """``GET /v3/media/<id>``: the file, with the credentials when ``secure_media`` (a JWT of the
        application, as "Secure Inbound Media" requires; Basic is accepted too)."""
        auth, claims = self._authenticate(request.headers.get("authorization", ""))
        found = self.media.get(request.url.path.removeprefix(MEDIA_PATH))
        status = 401 if self.secure_media and auth is None else 404 if found is None else 200
        self._record(
            request, raw, body=None, auth=auth, claims=claims, errors=[], status=status, message_uuid=None
        )
        if found is None or status != 200:
            return _problem_response(status, "https://developer.vonage.com/api-errors#not-found", "Not Found")
        return Response(found[0], media_type=found[1])

    def _update(self, request: Request, raw: bytes) -> Response:
        """``PATCH /v1/messages/<uuid>`` (spec ``UpdateMessage``): JWT only, the body validated against the
        request body's WhatsApp branch; 202 or the next of ``update_answers``."""
        auth, claims = self._authenticate(request.headers.get("authorization", ""))
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None
        errors = [] if auth is None else vonage_update_validator().errors(body)
        if auth == "basic":
            errors = ["UpdateMessage takes a JWT (bearerAuth) only"]
        answer = (
            unauthorized()
            if auth is None
            else Answer(422, {"title": "Invalid params", "detail": "; ".join(errors)})
            if errors
            else self.update_answers.popleft()
            if self.update_answers
            else Answer(202, None)
        )
        self._record(
            request,
            raw,
            body=body,
            auth=auth,
            claims=claims,
            errors=errors,
            status=answer.status,
            message_uuid=None,
        )
        if answer.status == 202 and answer.body is None:
            return Response(status_code=202, headers={"X-Request-Id": str(uuid.uuid4())})
        return _answer(answer, None)


def _answer(answer: Answer, message_uuid: str | None) -> Response:
    headers = {"X-Request-Id": str(uuid.uuid4()), **answer.headers}
    if message_uuid is not None:
        return JSONResponse({"message_uuid": message_uuid}, status_code=answer.status, headers=headers)
    media_type = (
        "application/json" if answer.status < 400 or answer.status == 422 else "application/problem+json"
    )
    return JSONResponse(
        dict(answer.body or {}), status_code=answer.status, headers=headers, media_type=media_type
    )


def _problem_response(
    status: int, type_: str, title: str, detail: str | None = None, **extra: Any
) -> Response:
    body: dict[str, Any] = {"type": type_, "title": title, "instance": uuid.uuid4().hex}
    if detail is not None:
        body["detail"] = detail
    body.update(extra)
    return _answer(Answer(status, body), None)


def status_webhook(
    record: Recorded,
    status: str = "delivered",
    *,
    error_code: int | None = None,
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    """The v1 status webhook Vonage would send about an accepted ``record`` (reference §1.5), for end-to-end
    tests to post (signed with ``tidings.providers.vonage.sign_webhook``)."""
    if record.message_uuid is None or not isinstance(record.body, dict):
        raise ValueError("only an accepted request has status webhooks")
    when = (timestamp or datetime.now(UTC)).astimezone(UTC)
    payload: dict[str, Any] = {
        "message_uuid": record.message_uuid,
        "to": record.body["to"],
        "from": record.body["from"],
        "timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "status": status,
        "channel": "whatsapp",
    }
    if record.client_ref is not None:
        payload["client_ref"] = record.client_ref
    if status in ("delivered", "read"):
        payload["usage"] = {"currency": "EUR", "price": "0"}
    if status == "delivered":
        payload["whatsapp"] = {"recipient": {"wa_id": record.body["to"]}, "waba_id": "00000000000"}
    if status in ("rejected", "undeliverable"):
        code = error_code or 1330
        title, detail = PROBLEMS.get(code, ("Delivery failed", "Delivery failed"))
        payload["error"] = {
            "type": f"{_ERRORS_URL}#{code}",
            "title": str(code),
            "detail": f"{title} - {detail}",
            "instance": uuid.uuid4().hex,
        }
    return payload
