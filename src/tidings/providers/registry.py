"""The WhatsApp providers Tidings knows: the one place that lists them. Everything else asks for a kind's
plug-in (``plugin``) or goes through them all (``plugins``); adding a provider is one module that declares
a ``ProviderType`` and one line here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tidings.providers.meta import Meta
from tidings.providers.plugin import AnyProviderType
from tidings.providers.sandbox import Sandbox
from tidings.providers.vonage import Vonage

_PLUGINS: dict[str, AnyProviderType] = {p.kind: p for p in (Sandbox(), Vonage(), Meta())}

# A new account's provider: it works without any account at a provider.
DEFAULT_KIND = Sandbox.kind


def plugin(kind: str) -> AnyProviderType:
    """The plug-in of ``kind``; ``LookupError`` when no provider has that kind."""
    found = _PLUGINS.get(kind)
    if found is None:
        raise LookupError(f"unknown WhatsApp provider kind {kind!r} (known: {', '.join(_PLUGINS)})")
    return found


def find(kind: str) -> AnyProviderType | None:
    return _PLUGINS.get(kind)


def plugins() -> list[AnyProviderType]:
    """Every provider, in the order the API lists them."""
    return list(_PLUGINS.values())


@contextmanager
def registered(extra: AnyProviderType) -> Iterator[AnyProviderType]:
    """``extra`` listed beside the built-in providers while the block runs (a test's own provider). Apps
    created inside the block route its webhooks and accept its integrations."""
    if extra.kind in _PLUGINS:
        raise ValueError(f"a provider of kind {extra.kind!r} is already registered")
    _PLUGINS[extra.kind] = extra
    try:
        yield extra
    finally:
        del _PLUGINS[extra.kind]
