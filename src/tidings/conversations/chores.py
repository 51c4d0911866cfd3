"""What the worker does for conversations besides sending: fetch the files users sent (once, kept in
``media_files``) and tell the provider which inbound messages an agent has read (the user's blue ticks).

Both are provider calls, so they run in the worker (where the providers are), never in a webhook's
transaction: a webhook only records ``media_state = pending`` / ``read_state = pending``. A fetch that
fails is tried again on later ticks, ``MEDIA_TRIES`` times in all, then marked failed (the thread says so).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import select, update

from tidings.conversations.models import InboundMessage
from tidings.conversations.service import store_media
from tidings.db import Database
from tidings.providers.base import MediaRef, ProviderApiError
from tidings.providers.pool import ProviderPool

log = logging.getLogger(__name__)

MEDIA_TRIES = 5
BATCH = 20


def _pending(db: Database, column: Any, limit: int) -> list[Any]:
    with db.read() as session:
        return list(
            session.execute(
                select(
                    InboundMessage.id,
                    InboundMessage.account_id,
                    InboundMessage.provider,
                    InboundMessage.provider_message_id,
                    InboundMessage.media,
                )
                .where(column == "pending")
                .order_by(InboundMessage.id)
                .limit(limit)
            )
        )


def _provider_kind(pool: ProviderPool, account_id: str) -> Any:
    provider = pool.get(account_id)
    return provider, getattr(provider, "kind", None)


async def fetch_media(db: Database, pool: ProviderPool, limit: int = BATCH) -> int:
    """Fetch the pending files users sent; returns how many were kept."""
    kept = 0
    for row_id, account_id, provider_kind, _, media in await asyncio.to_thread(
        _pending, db, InboundMessage.media_state, limit
    ):
        media = dict(media or {})
        provider, kind = await asyncio.to_thread(_provider_kind, pool, account_id)
        try:
            if kind != provider_kind:
                raise ProviderApiError(
                    None, None, f"the account's provider is now {kind}, not {provider_kind}"
                )
            content, mime_type = await provider.fetch_media(
                MediaRef(media["ref"], media.get("mime_type"), media.get("filename"), media.get("sha256"))
            )
        except (ProviderApiError, KeyError) as exc:
            tries = int(media.get("tries", 0)) + 1
            log.warning("inbound %s: could not fetch its file (try %s): %s", row_id, tries, exc)
            state = "failed" if tries >= MEDIA_TRIES or kind != provider_kind else "pending"
            await asyncio.to_thread(
                _settle_media, db, row_id, {**media, "tries": tries}, state, None, b"", ""
            )
            continue
        await asyncio.to_thread(
            _settle_media,
            db,
            row_id,
            media,
            "fetched",
            account_id,
            content,
            mime_type or media.get("mime_type"),
        )
        kept += 1
    return kept


def _settle_media(
    db: Database,
    row_id: int,
    media: dict[str, Any],
    state: str,
    account_id: str | None,
    content: bytes,
    mime_type: str | None,
) -> None:
    with db.session() as session:
        file_id = None
        if account_id is not None and content:
            file_id = store_media(session, account_id, content, mime_type or "", media.get("filename")).id
        session.execute(
            update(InboundMessage)
            .where(InboundMessage.id == row_id, InboundMessage.media_state == "pending")
            .values(media=media, media_state=state, media_id=file_id)
        )


async def send_read_marks(db: Database, pool: ProviderPool, limit: int = BATCH) -> int:
    """Tell the provider of the inbound messages agents opened; returns how many it took."""
    taken = 0
    for row_id, account_id, provider_kind, provider_message_id, _ in await asyncio.to_thread(
        _pending, db, InboundMessage.read_state, limit
    ):
        provider, kind = await asyncio.to_thread(_provider_kind, pool, account_id)
        ok = kind == provider_kind and await provider.mark_read(provider_message_id)
        taken += ok
        await asyncio.to_thread(_settle_read, db, row_id, "sent" if ok else "unsupported")
    return taken


def _settle_read(db: Database, row_id: int, state: str) -> None:
    with db.session() as session:
        session.execute(update(InboundMessage).where(InboundMessage.id == row_id).values(read_state=state))
