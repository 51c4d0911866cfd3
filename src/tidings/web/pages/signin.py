"""Sign in and sign out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from tidings.deps import Db, client_address
from tidings.errors import ApiError
from tidings.users import service as users
from tidings.web.auth import (
    SESSION_COOKIE,
    SIGNED_IN_PAGES,
    check_signin_csrf,
    clear_session_cookie,
    keep_signin_csrf,
    safe_next,
    set_session_cookie,
    signin_csrf,
)
from tidings.web.render import render

router = APIRouter(include_in_schema=False)


def _form(
    request: Request, *, email: str = "", account: str = "", error: str | None = None, status: int = 200
) -> Response:
    token = signin_csrf(request)
    context = {
        "email": email,
        "account_id": account,
        "error": error,
        "next": safe_next(request.query_params.get("next")),
        "csrf_token": token,
    }
    response = render(request, "signin.html", None, context, status)
    keep_signin_csrf(request, response, token)
    return response


@router.get("/signin")
def signin_page(request: Request) -> Response:
    return _form(request)


@router.post("/signin", dependencies=[Depends(check_signin_csrf)])
def signin(
    request: Request,
    db: Db,
    email: Annotated[str, Form(max_length=254)],
    password: Annotated[str, Form(max_length=1024)],
    account: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """A right e-mail and password start a session; a wrong one says so without telling which was wrong.
    Failures are limited per address and per e-mail (429 with the wait)."""
    try:
        with db.session() as session:
            account_id = account.strip() or users.only_account_of(session, email)
            user = users.sign_in(
                session, request.app.state.signins, account_id, email, password, client_address(request)
            )
            new = users.start_session(session, user)
    except ApiError as exc:
        message = exc.message
        if exc.status == 401:
            message = (
                "Wrong e-mail or password. If your e-mail belongs to several accounts, "
                "enter the account ID too."
            )
        return _form(request, email=email, account=account, error=message, status=exc.status)
    response = RedirectResponse(safe_next(request.query_params.get("next")), status_code=303)
    set_session_cookie(request, response, new.token, int(users.SESSION_LIFETIME.total_seconds()))
    return response


@router.post("/signout", dependencies=[SIGNED_IN_PAGES])
def signout(request: Request, db: Db) -> Response:
    with db.session() as session:
        users.end_session(session, request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/signin", status_code=303)
    clear_session_cookie(request, response)
    return response


@router.get("/")
def home() -> Response:
    return RedirectResponse("/campaigns", status_code=303)
