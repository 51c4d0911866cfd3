"""What each ``reason`` a ledger row can carry means, in plain language — written once, here.

A ``skipped`` row carries one of Tidings' own codes (written by ``delivery.planning``,
``delivery.send_rules`` and ``personalization``); a ``failed`` row carries ``<provider>:<code>``
(``delivery.outcomes`` and ``delivery.statuses``), the provider's own code (Meta's Graph API codes,
Vonage's — which the sandbox imitates), or one of the codes a provider plug-in writes when there was no
answer to read (``http_<status>``, ``timeout``, …); or ``outcome_unknown`` (``delivery.reconciliation``).
"""

from __future__ import annotations

# Tidings' own codes: why a user could not be reached, or why a send ended without a provider's answer.
OWN = {
    # delivery.planning (when the audience is planned) and delivery.send_rules (at the moment of sending)
    "not_opted_in": "The user has not opted in to WhatsApp messages (MSG-whatsapp is false).",
    "no_valid_phone": "The user has no valid phone number in E.164 form.",
    "duplicate_phone": "Another profile with the same phone number got this message: one per person.",
    "global_frequency_cap": "The account's frequency cap for this user was already reached.",
    "campaign_frequency_cap": "The campaign's frequency rule (once, or a minimum gap) was already met for "
    "this user.",
    "dnd": "The send fell inside the account's Do-Not-Disturb hours, set to drop such messages.",
    "messaging_limit": "The sender's daily messaging limit (unique users a day, set by WhatsApp) "
    "was reached.",
    "missing_personalization": "A value the template needs is missing on the profile, with no default.",
    # personalization (at the moment of sending)
    "liquid_aborted": "The personalization ran {% abort %} for this user.",
    "liquid_timeout": "Rendering the personalization took too long.",
    "liquid_limit": "The personalization went past a rendering limit (loops, output size).",
    "personalization_error": "The personalization could not be rendered for this user.",
    "value_too_long": "A rendered value is longer than WhatsApp allows for a template parameter.",
    # control groups (not errors: shown with the control group)
    "system_control_group": "Held back: in the account's system control group.",
    "campaign_control_group": "Held back: in this campaign's control group.",
    # delivery.reconciliation
    "outcome_unknown": "The provider call's outcome could not be known (the connection was lost after the "
    "request went out); not sent again, so that it is never sent twice.",
}

# Codes a provider plug-in writes itself, whatever the provider.
TRANSPORT = {
    "connect_timeout": "The provider could not be reached in time (connection time-out).",
    "connect_error": "The provider could not be reached (the connection was refused).",
    "timeout": "The provider did not answer in time.",
    "network_error": "The network failed while talking to the provider.",
    "exception": "An unexpected error happened while sending; retried until the attempts ran out.",
    "invalid_message": "The message could not be built for this provider (a value it does not accept).",
    "credentials_unreadable": "The saved provider credentials cannot be opened (another TIDINGS_SECRET_KEY).",
    "integration_invalid": "The WhatsApp integration's settings cannot work; fix them and resume.",
    "unauthorized": "The provider refused the credentials (HTTP 401).",
    "forbidden": "The credentials lack a permission the provider requires (HTTP 403).",
    "failed": "The provider reported the message failed, without a code.",
    "error": "The provider refused the message, without a code.",
    "rejected": "The provider rejected the message, without a code.",
    "undeliverable": "The provider could not pass the message on to WhatsApp.",
}

# Meta WhatsApp Cloud API (Graph API) codes: ../shared/reference/whatsapp-providers-and-clevertap.md §2.
META = {
    "0": "Meta refused the access token (authentication).",
    "1": "Meta's API had an unknown error; retried.",
    "2": "Meta's service was temporarily unavailable; retried.",
    "4": "Too many API calls for the app; retried later.",
    "10": "The app lacks the permission to send for this number.",
    "17": "The user's API call limit was reached; retried later.",
    "32": "The page's API call limit was reached; retried later.",
    "100": "A parameter of the request is invalid.",
    "190": "The access token has expired or was revoked.",
    "368": "The WhatsApp Business account is temporarily blocked for policy violations.",
    "470": "More than 24 hours passed since the user last replied: only a template can reach them "
    "(the older API's code for 131047).",
    "613": "The rate limit for this phone number was hit; retried later.",
    "1013": "The user is not a valid WhatsApp user (the older API's code).",
    "80007": "The WhatsApp Business account's rate limit was hit; retried later.",
    "130429": "The number's message throughput was reached; retried later.",
    "130472": "The user's number is part of a Meta experiment: Meta did not deliver the marketing message.",
    "131000": "Something went wrong at Meta; retried.",
    "131008": "A required parameter is missing.",
    "131009": "A parameter value is invalid.",
    "131016": "Meta's service is temporarily overloaded; retried.",
    "131026": "Undeliverable: the number is not on WhatsApp, the user has not accepted the latest terms, or "
    "uses an old WhatsApp version.",
    "131031": "The WhatsApp Business account is locked.",
    "131042": "A payment problem with the WhatsApp Business account.",
    "131047": "More than 24 hours passed since the user last replied: only a template can reach them.",
    "131048": "Meta limited sending because of the number's quality (spam rate limit).",
    "131049": "Meta chose not to deliver this marketing message, to keep the user's experience healthy "
    "(per-user marketing limit); it may be sent again later.",
    "131050": "The user has stopped marketing messages from this business.",
    "131051": "WhatsApp does not support this message type.",
    "131052": "The media could not be downloaded.",
    "131053": "The media could not be uploaded.",
    "131056": "Too many messages to the same user in a short time (pair rate limit); retried later.",
    "131057": "The business account is being upgraded (maintenance); retried later.",
    "132000": "The number of values did not match the template's variables.",
    "132001": "The template does not exist in this language, or is not approved.",
    "132005": "The template's text with its values is too long.",
    "132007": "The template's content breaks WhatsApp's formatting policy.",
    "132012": "A template value has the wrong format.",
    "132015": "The template is paused (low quality).",
    "132016": "The template is disabled.",
    "133004": "Meta's server was temporarily unavailable; retried.",
    "133010": "The sender's phone number is not registered with WhatsApp.",
}

# Vonage Messages API codes (the sandbox imitates them): ../shared/reference/… §1.4-1.5.
VONAGE = {
    "1000": "Vonage throttled the account's submissions; retried.",
    "1020": "A parameter is invalid.",
    "1022": "The template or its parameters are invalid.",
    "1030": "Vonage had an internal error; retried.",
    "1050": "The number is barred.",
    "1060": "The client reference is invalid.",
    "1070": "The provider's quota is exceeded.",
    "1100": "The channel is not supported.",
    "1110": "The channel's parameters are invalid.",
    "1120": "The sender is invalid.",
    "1140": "The message type is invalid.",
    "1150": "A parameter value is invalid.",
    "1170": "The recipient is invalid.",
    "1300": "The number is not on WhatsApp.",
    "1320": "The message was already sent.",
    "1330": "Delivery failed.",
    "1331": "The provider had an error; retried in a few minutes.",
    "1340": "More than 24 hours passed since the user last replied: only a template can reach them.",
    "1360": "The message expired before it could be delivered.",
    "1380": "The media is invalid.",
    "1381": "The media could not be fetched.",
    "1382": "The media is too large.",
    "1420": "The sender is invalid.",
    "1430": "The recipient is invalid.",
    "1440": "The message type is invalid.",
    "1450": "The client reference is invalid (100 characters at most).",
    "1451": "The context is invalid.",
    "1461": "WhatsApp limited marketing templates to this user (per-user marketing limit).",
}

PROVIDER_CODES = {"meta": META, "vonage": VONAGE, "sandbox": VONAGE}
HTTP = {
    400: "The provider said the request was malformed.",
    401: "The provider refused the credentials.",
    402: "The provider account's balance is too low.",
    403: "The credentials lack a permission the provider requires.",
    404: "The provider did not find what the request names.",
    408: "The provider timed out reading the request; retried.",
    422: "The provider could not process the message.",
    429: "The provider's rate limit was hit; retried.",
}


def _http(code: str) -> str | None:
    if not code.startswith("http_") or not code[5:].isdigit():
        return None
    status = int(code[5:])
    if status in HTTP:
        return HTTP[status]
    return (
        "The provider had a server error; retried."
        if status >= 500
        else f"The provider answered HTTP {status}."
    )


def split(reason: str) -> tuple[str | None, str]:
    """``(provider, code)`` of a reason: ``("meta", "131026")`` for ``meta:131026``, ``(None, "dnd")``."""
    provider, sep, code = reason.partition(":")
    return (provider, code) if sep else (None, reason)


def explain(reason: str | None) -> str | None:
    """The plain-language meaning of a ledger ``reason`` (None for none); an unknown code says so."""
    if not reason:
        return None
    provider, code = split(reason)
    if provider is None:
        return OWN.get(code) or TRANSPORT.get(code) or f"Unknown reason {code!r}."
    known = PROVIDER_CODES.get(provider, {}).get(code) or TRANSPORT.get(code) or _http(code)
    return known or f"{provider.capitalize()} error {code} (no explanation on file: see the error detail)."
