"""Consent keywords: STOP (and the like) opts a phone number out of WhatsApp, START opts it in again.

A reply is compared as people write it: Unicode-normalised (NFKC, so full-width letters are plain ones),
case-folded, accents removed, punctuation, symbols and emoji turned into spaces, spaces collapsed, and
polite words around it dropped ("stop please", "Stop.", "STOP!!", "ok stop", "baja por favor"). What is
left must be a keyword exactly: "don't stop", "stopwatch" or "non-stop deals" are not. A tapped button is
examined by its label and by its payload (``STOP_PROMOTIONS`` and ``StopPromotions`` read as "stop
promotions"), so Meta's "Stop promotions" quick-reply button of marketing templates opts out too.

Besides the built-in English keywords, an account may add its own per language in ``accounts.settings``::

    {"keywords": {"es": {"opt_out": ["BAJA", "ALTO"], "opt_in": ["ALTA"]},
                  "pt_BR": {"opt_out": ["SAIR"], "opt_in": ["VOLTAR"]}}}

The language of a reply is not known, so every language's keywords apply to every reply; the grouping
says what each one is for. A keyword cannot both opt out and opt in (after normalising), and when a reply
matches both ways (a label and a payload), opting out wins.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# As written by people, after normalising (see ``normalize``).
BUILTIN_OPT_OUT = frozenset(
    {
        "stop",
        "stop all",
        "stopall",
        "stop promotions",
        "stop promotion",
        "stop marketing",
        "stop messages",
        "stop all messages",
        "stop messaging",
        "stop messaging me",
        "stop sending",
        "stop sending messages",
        "stop sending me messages",
        "unsubscribe",
        "unsubscribe me",
        "opt out",
        "optout",
        "opt me out",
    }
)
BUILTIN_OPT_IN = frozenset({"start", "unstop", "subscribe", "opt in", "optin", "opt me in"})

# Polite words that may surround a keyword ("stop please", "please stop", "ok stop thanks").
FILLERS: tuple[tuple[str, ...], ...] = tuple(
    tuple(words.split())
    for words in (
        "please",
        "pls",
        "plz",
        "thanks",
        "thank you",
        "thankyou",
        "thx",
        "ty",
        "now",
        "ok",
        "okay",
        "por favor",
        "porfavor",
        "porfa",
        "gracias",
        "obrigado",
        "obrigada",
        "bitte",
        "danke",
        "merci",
        "svp",
        "s il vous plait",
        "per favore",
        "grazie",
    )
)

MAX_REPLY = 200  # characters: a longer message is a conversation, not a keyword
MAX_LANGUAGES = 30
MAX_KEYWORDS = 50  # per language and direction
MAX_KEYWORD = 60  # characters
_LANGUAGE = re.compile(r"^[a-z]{2,3}([_-][A-Za-z0-9]{2,8})?$")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def normalize(text: str, *, split_camel: bool = False) -> str:
    """``text`` as keywords are compared: NFKC, case-folded, without accents, punctuation and symbols as
    spaces, invisible format characters dropped, spaces collapsed; with ``split_camel`` (for a button's
    payload, not for what people type), ``StopAll`` is two words."""
    text = unicodedata.normalize("NFKC", text)
    if split_camel:
        text = _CAMEL.sub(" ", text)
    text = text.casefold()
    out = []
    for char in unicodedata.normalize("NFKD", text):
        if unicodedata.combining(char):
            continue  # an accent
        category = unicodedata.category(char)
        if category == "Cf":
            continue  # zero-width space, joiners, direction marks
        out.append(char if char.isalnum() else " ")
    return " ".join("".join(out).split())


def _strip_fillers(words: list[str]) -> list[str]:
    changed = True
    while changed:
        changed = False
        for filler in FILLERS:
            n = len(filler)
            if len(words) > n and tuple(words[:n]) == filler:
                words, changed = words[n:], True
            if len(words) > n and tuple(words[-n:]) == filler:
                words, changed = words[:-n], True
    return words


def keyword_form(text: str, *, split_camel: bool = False) -> str:
    """The form a reply or a keyword is matched in: normalised, polite words around it dropped."""
    return " ".join(_strip_fillers(normalize(text, split_camel=split_camel).split()))


@dataclass(frozen=True)
class Keywords:
    """The keywords in force for an account, in ``keyword_form``."""

    opt_out: frozenset[str] = BUILTIN_OPT_OUT
    opt_in: frozenset[str] = BUILTIN_OPT_IN


def _words(value: Any) -> Iterable[str]:
    if isinstance(value, list):
        yield from (v for v in value if isinstance(v, str))


def account_keywords(settings: Mapping[str, Any] | None) -> Keywords:
    """The built-in keywords and the account's own (``settings["keywords"]``, read leniently: it was
    validated when saved)."""
    raw = (settings or {}).get("keywords")
    if not isinstance(raw, Mapping) or not raw:
        return Keywords()
    opt_out, opt_in = set(BUILTIN_OPT_OUT), set(BUILTIN_OPT_IN)
    for entry in raw.values():
        if isinstance(entry, Mapping):
            opt_out.update(f for f in map(keyword_form, _words(entry.get("opt_out"))) if f)
            opt_in.update(f for f in map(keyword_form, _words(entry.get("opt_in"))) if f)
    return Keywords(frozenset(opt_out), frozenset(opt_in - opt_out))


def _language(code: str) -> str:
    if not _LANGUAGE.match(code):
        raise ValueError(f"{code!r} is not a language code like es or pt_BR")
    return code


def _keyword(word: str) -> str:
    if not keyword_form(word):
        raise ValueError(f"{word!r} has no letters or digits")
    return word


Keyword = Annotated[str, Field(min_length=1, max_length=MAX_KEYWORD), AfterValidator(_keyword)]


class LanguageKeywords(BaseModel):
    """One language's own keywords (either list or both)."""

    model_config = ConfigDict(extra="forbid")

    opt_out: list[Keyword] = Field(default_factory=list, max_length=MAX_KEYWORDS, examples=[["BAJA"]])
    opt_in: list[Keyword] = Field(default_factory=list, max_length=MAX_KEYWORDS, examples=[["ALTA"]])


def _one_way(keywords: dict[str, LanguageKeywords]) -> dict[str, LanguageKeywords]:
    """A keyword cannot both opt out and opt in (the built-in ones included), after normalising."""
    seen: dict[str, tuple[str, str]] = {
        **{k: ("opt_in", "built-in") for k in BUILTIN_OPT_IN},
        **{k: ("opt_out", "built-in") for k in BUILTIN_OPT_OUT},
    }
    for language, entry in keywords.items():
        for direction in ("opt_out", "opt_in"):
            for word in getattr(entry, direction):
                form = keyword_form(word)
                other = seen.get(form)
                if other is not None and other[0] != direction:
                    raise ValueError(
                        f"{language}.{direction}: {word!r} is also an {other[0]} keyword ({other[1]}); "
                        "a keyword cannot both opt out and opt in"
                    )
                seen[form] = (direction, language)
    return keywords


# ``settings.keywords``: the account's own keywords per language.
AccountKeywords = Annotated[
    dict[Annotated[str, AfterValidator(_language)], LanguageKeywords],
    Field(max_length=MAX_LANGUAGES, description="Per language code (es, pt_BR): the account's own keywords."),
    AfterValidator(_one_way),
]


def consent_change(text: str | None, payload: str | None, keywords: Keywords) -> bool | None:
    """What a reply says about consent: ``False`` (opt out) if its text or its button's payload is an
    opt-out keyword, else ``True`` if one is an opt-in keyword, else ``None``."""
    forms = set()
    if text and len(text) <= MAX_REPLY:
        forms.add(keyword_form(text))
    if payload and len(payload) <= MAX_REPLY:
        forms |= {keyword_form(payload), keyword_form(payload, split_camel=True)}
    if forms & keywords.opt_out:
        return False
    if forms & keywords.opt_in:
        return True
    return None
