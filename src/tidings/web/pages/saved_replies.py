"""Saved replies (canned responses): the list of the account's, a form to add one, and a delete button.
Agents insert them in the inbox's reply box by ``/shortcut`` (``conversations.service.saved_replies``), so
whoever answers may keep them: agents and above, as the inbox. Registered before the inbox's router."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from tidings.bounds import Id
from tidings.conversations import service as conversations
from tidings.deps import Db
from tidings.errors import ApiError
from tidings.web.auth import SIGNED_IN_PAGES, CurrentViewer, Viewer
from tidings.web.render import render

router = APIRouter(include_in_schema=False, dependencies=[SIGNED_IN_PAGES])

HERE = "/inbox/saved-replies"
# The form's field for each refusal of ``save_reply`` (any other refusal is an error page).
FIELDS = {"invalid_shortcut": "shortcut", "shortcut_taken": "shortcut", "invalid_text": "text"}


def _page(
    request: Request,
    viewer: Viewer,
    db: Db,
    *,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
) -> Response:
    with db.read() as session:
        saved = conversations.saved_replies(session, viewer.account.id)
    context = {
        "title": "Saved replies",
        "saved": saved,
        "tz": viewer.account.timezone or None,
        "form": form or {"shortcut": "", "text": ""},
        "errors": errors or {},
        "added": request.query_params.get("added", "")[:40],
    }
    return render(request, "inbox/saved_replies.html", viewer, context, 422 if errors else 200)


@router.get(HERE)
def saved_reply_list(request: Request, viewer: CurrentViewer, db: Db) -> Response:
    return _page(request, viewer, db)


@router.post(HERE)
def add_saved_reply(
    request: Request,
    viewer: CurrentViewer,
    db: Db,
    shortcut: Annotated[str, Form(max_length=200)] = "",
    text: Annotated[str, Form(max_length=20_000)] = "",
) -> Response:
    """Add one; a refusal is shown next to its field with what was typed kept."""
    try:
        with db.session() as session:
            saved = conversations.save_reply(session, viewer.account.id, shortcut, text)
            added = saved.shortcut
    except ApiError as exc:
        if exc.code not in FIELDS:
            raise
        errors = {FIELDS[exc.code]: exc.message}
        return _page(request, viewer, db, form={"shortcut": shortcut, "text": text}, errors=errors)
    return RedirectResponse(f"{HERE}?added={added}", status_code=303)


@router.post(HERE + "/{saved_reply_id}/delete")
def delete_saved_reply(viewer: CurrentViewer, db: Db, saved_reply_id: Id) -> Response:
    with db.session() as session:
        conversations.delete_saved_reply(session, viewer.account.id, saved_reply_id)
    return RedirectResponse(HERE, status_code=303)
