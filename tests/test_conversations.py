"""The conversations engine at the service level, on SQLite and PostgreSQL: attribution of a user's reply
(by the message it quotes, else by the attribution window), every state transition, the 24-hour rule at
its edges where the reply is queued and again where it leaves (the dispatch mark), two agents taking one
conversation at once, unknown numbers, repeated and reordered inbound webhooks, the STOP confirmation,
and labels, notes, saved replies, counts and filters."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, insert, select, update

from tests.helpers import insert_profiles, phone, running_campaign
from tidings.accounts.models import Account
from tidings.accounts.service import NewAccount
from tidings.conversations import service as conversations
from tidings.conversations.models import Conversation, InboundMessage, State
from tidings.conversations.service import Agent, Filters, Reply
from tidings.db import Database, utcnow
from tidings.delivery.claims import claim_batch
from tidings.delivery.models import Message
from tidings.delivery.send_rules import mark_dispatched
from tidings.errors import ApiError
from tidings.profiles.models import Profile
from tidings.profiles.service import ingest
from tidings.providers.base import InboundReply
from tidings.templates.service import create_template
from tidings.users.models import User

LEASE = timedelta(seconds=60)
PUBLIC_URL = "https://tidings.example"
JUST_INSIDE = timedelta(hours=23, minutes=59)
JUST_OUTSIDE = timedelta(hours=24, minutes=1)
T = TypeVar("T")


# --- helpers -------------------------------------------------------------------------------------------


def _start() -> datetime:
    """A moment some days ago, to the second: the tests move their own clock forward from it."""
    return utcnow().replace(microsecond=0) - timedelta(days=5)


def _in(
    db: Database, account: NewAccount, mid: str, number: str, at: datetime, text: str = "hi", **kw: Any
) -> bool:
    """One inbound message through the engine, in its own transaction (one webhook); whether it was new."""
    with db.session() as session:
        reply = InboundReply(provider_message_id=mid, from_phone=number, timestamp=at, text=text, **kw)
        return conversations.record_inbound(session, account.account_id, "meta", reply)


def _conversation(db: Database, account: NewAccount, number: str) -> Conversation:
    with db.session() as session:
        found = conversations.conversation_by_phone(session, account.account_id, number)
        assert found is not None
        return found


def _do(db: Database, work: Callable[..., T], *args: Any, **kw: Any) -> T:
    """A service call in its own transaction."""
    with db.session() as session:
        return work(session, *args, **kw)


def _refused(status: int, code: str, work: Callable[[], object]) -> str:
    with pytest.raises(ApiError) as raised:
        work()
    assert (raised.value.status, raised.value.code) == (status, code), raised.value.message
    return raised.value.message


def _agents(db: Database, account: NewAccount, *names: str) -> list[int]:
    """Users of the account (agents), written straight into the table (no password hashing)."""
    with db.session() as session:
        ids = []
        for name in names:
            ids.append(
                session.scalar(
                    insert(User)
                    .values(
                        account_id=account.account_id,
                        email=f"{name}@acme.example",
                        role="agent",
                        password_hash="-",
                        created_at=utcnow(),
                    )
                    .returning(User.id)
                )
            )
        return [int(i) for i in ids]


def _profile(db: Database, account: NewAccount, number: str) -> Profile:
    with db.session() as session:
        found = session.scalar(select(Profile).where(Profile.phone == number))
        assert found is not None
        return found


def _reply(
    db: Database, account: NewAccount, conversation_id: int, answer: Reply, agent: Agent, now: datetime
) -> Message:
    with db.session() as session:
        return conversations.reply(
            session, account.account_id, conversation_id, answer, agent, public_url=PUBLIC_URL, now=now
        )


def _row(db: Database, message_id: int) -> Message:
    with db.session() as session:
        row = session.get(Message, message_id)
        assert row is not None
        return row


def _shown(db: Database, account: NewAccount, number: str, now: datetime) -> State:
    return conversations.state_of(_conversation(db, account, number), now)


def _listed(db: Database, account: NewAccount, now: datetime | None = None, **filters: Any) -> list[str]:
    with db.session() as session:
        found = conversations.list_conversations(session, account.account_id, Filters(**filters), now=now)
    return sorted(item.conversation.phone for item in found)


def _template(db: Database, account: NewAccount, name: str = "shop:order", variables: int = 1) -> int:
    body = "Hello " + " ".join(f"{{{{{n + 1}}}}}" for n in range(variables))
    with db.session() as session:
        return create_template(session, account.account_id, name=name, body=body, category="UTILITY").id


def _settings(db: Database, account: NewAccount, **settings: Any) -> None:
    with db.session() as session:
        row = session.get(Account, account.account_id)
        assert row is not None
        row.settings = settings


def _sent_campaign(db: Database, account: NewAccount, numbers: list[str], at: datetime) -> list[Message]:
    """A campaign whose messages (one per number; a repeated number is another occurrence for the same
    user) the provider took at ``at`` + n seconds, with provider ids ``wamid.<n>``."""
    campaign_id = running_campaign(db, account.account_id, list(dict.fromkeys(numbers)))
    with db.session() as session:
        first = {
            m.to_phone: m for m in session.scalars(select(Message).where(Message.campaign_id == campaign_id))
        }
        ids = []
        for n, number in enumerate(numbers):
            if n == numbers.index(number):
                ids.append(first[number].id)
                continue
            again = Message(  # another occurrence of the campaign for the same user
                account_id=account.account_id,
                campaign_id=campaign_id,
                profile_id=first[number].profile_id,
                occurrence=f"again-{n}",
                state="queued",
                to_phone=number,
                attempts=0,
            )
            session.add(again)
            session.flush()
            ids.append(again.id)
        for n, message_id in enumerate(ids):
            session.execute(
                update(Message)
                .where(Message.id == message_id)
                .values(
                    state="sent",
                    provider_message_id=f"wamid.{n}",
                    sent_at=at + timedelta(seconds=n),
                    dispatched_at=at + timedelta(seconds=n),
                )
            )
    return [_row(db, i) for i in ids]


def _answers(db: Database, account: NewAccount, mid: str) -> tuple[int | None, int | None]:
    with db.session() as session:
        row = session.execute(
            select(InboundMessage.answers_message_id, InboundMessage.campaign_id).where(
                InboundMessage.provider_message_id == mid
            )
        ).one()
    return row[0], row[1]


# --- attribution ----------------------------------------------------------------------------------------


def test_a_reply_answers_the_message_it_quotes(db: Database, account: NewAccount) -> None:
    """Two campaign messages to one number: a reply quoting the older answers the older one (not the
    latest, which a reply without context would answer)."""
    t0 = _start()
    number = phone(1)
    older, later = _sent_campaign(db, account, [number, number], t0)
    assert _in(db, account, "in.1", number, t0 + timedelta(minutes=5), "yes", context_message_id="wamid.0")
    assert _answers(db, account, "in.1") == (older.id, older.campaign_id)
    quoted = _row(db, older.id)
    assert (quoted.state, quoted.replied_at) == ("read", t0 + timedelta(minutes=5))
    assert _row(db, later.id).replied_at is None
    assert _conversation(db, account, number).campaign_id == older.campaign_id
    # A quote of no message of ours falls back to the window: the latest message sent to the number.
    assert _in(db, account, "in.2", number, t0 + timedelta(minutes=6), "and?", context_message_id="wamid.zz")
    assert _answers(db, account, "in.2") == (later.id, later.campaign_id)


def test_a_reply_without_context_answers_the_latest_message_within_24_hours(
    db: Database, account: NewAccount
) -> None:
    """The default attribution window is 24 hours from the campaign message: a reply 23 h 59 min after
    it counts for it, one 24 h 1 min after does not (and the message is not marked replied)."""
    t0 = _start()
    inside, outside = phone(1), phone(2)
    first, second = _sent_campaign(db, account, [inside, outside], t0)
    _in(db, account, "in.1", inside, first.sent_at + JUST_INSIDE)
    _in(db, account, "in.2", outside, second.sent_at + JUST_OUTSIDE)
    assert _answers(db, account, "in.1") == (first.id, first.campaign_id)
    assert _answers(db, account, "in.2") == (None, None)
    assert _row(db, first.id).state == "read" and _row(db, first.id).replied_at is not None
    assert (_row(db, second.id).state, _row(db, second.id).replied_at) == ("sent", None)
    assert _conversation(db, account, outside).campaign_id is None


# --- states ---------------------------------------------------------------------------------------------


def test_every_state_transition(db: Database, account: NewAccount) -> None:
    t0 = _start()
    number = phone(1)
    insert_profiles(db, account.account_id, [{"identity": "u1", "phone": number}])
    [ann, bob] = _agents(db, account, "ann", "bob")
    admin = Agent(None, admin=True)

    _in(db, account, "in.1", number, t0)
    c = _conversation(db, account, number)
    assert (c.state, c.waiting_since, c.unread, c.assignee_id) == (State.new, t0, 1, None)

    # new → active: an agent answers (and so takes the unassigned conversation).
    _reply(db, account, c.id, Reply(text="Hello!"), Agent(ann), t0 + timedelta(minutes=1))
    c = _conversation(db, account, number)
    assert (c.state, c.waiting_since, c.assignee_id) == (State.active, None, ann)
    assert c.last_agent_at == t0 + timedelta(minutes=1)

    # active → pending: the user answers.
    _in(db, account, "in.2", number, t0 + timedelta(minutes=2))
    c = _conversation(db, account, number)
    assert (c.state, c.waiting_since) == (State.pending, t0 + timedelta(minutes=2))

    # pending → active.
    _reply(db, account, c.id, Reply(text="Done."), Agent(ann), t0 + timedelta(minutes=3))
    assert _conversation(db, account, number).state == State.active

    # Another agent may not resolve what ann holds; ann may.
    _refused(
        409, "held_by_other", lambda: _do(db, conversations.resolve, account.account_id, c.id, Agent(bob))
    )
    _do(db, conversations.resolve, account.account_id, c.id, Agent(ann))
    c = _conversation(db, account, number)
    assert (c.state, c.waiting_since) == (State.resolved, None)

    # resolved → pending: the user writes again and ann still holds it.
    _in(db, account, "in.3", number, t0 + timedelta(minutes=4))
    c = _conversation(db, account, number)
    assert (c.state, c.assignee_id, c.waiting_since) == (State.pending, ann, t0 + timedelta(minutes=4))

    # resolved → new: nobody holds it.
    _do(db, conversations.assign, account.account_id, c.id, None, admin)
    _do(db, conversations.resolve, account.account_id, c.id, admin)
    _in(db, account, "in.4", number, t0 + timedelta(minutes=5))
    c = _conversation(db, account, number)
    assert (c.state, c.assignee_id, c.waiting_since) == (State.new, None, t0 + timedelta(minutes=5))
    assert c.unread == 4

    # Opening the thread reads it: unread 0, the latest message to be marked read at the provider.
    _do(db, conversations.open_conversation, account.account_id, c.id)
    assert _conversation(db, account, number).unread == 0
    with db.session() as session:
        marks = dict(
            session.execute(select(InboundMessage.provider_message_id, InboundMessage.read_state)).all()
        )
    assert marks == {"in.1": None, "in.2": None, "in.3": None, "in.4": "pending"}


def test_an_active_conversation_whose_window_closed_is_inactive(db: Database, account: NewAccount) -> None:
    """``inactive`` is read from the clock: state_of, the state filter and the counts agree at the edges."""
    t0 = _start()
    number, other = phone(1), phone(2)
    [ann] = _agents(db, account, "ann")
    _in(db, account, "in.1", number, t0)
    _in(db, account, "in.2", other, t0)  # stays new: nobody answers it
    c = _conversation(db, account, number)
    _reply(db, account, c.id, Reply(text="Hi"), Agent(ann), t0 + timedelta(minutes=1))

    inside, outside = t0 + JUST_INSIDE, t0 + JUST_OUTSIDE
    assert _shown(db, account, number, inside) == State.active
    assert _shown(db, account, number, outside) == State.inactive
    assert _shown(db, account, other, outside) == State.new  # a new conversation never turns inactive
    assert _listed(db, account, inside, state=State.active) == [number]
    assert _listed(db, account, inside, state=State.inactive) == []
    assert _listed(db, account, outside, state=State.active) == []
    assert _listed(db, account, outside, state=State.inactive) == [number]
    with db.session() as session:
        listed = conversations.list_conversations(session, account.account_id, Filters(), now=outside)
        assert {i.conversation.phone: i.state for i in listed} == {number: State.inactive, other: State.new}
        before = conversations.counts(session, account.account_id, now=inside)
        after = conversations.counts(session, account.account_id, now=outside)
    assert before["active"]["total"] == 1 and before["inactive"]["total"] == 0
    assert after["active"]["total"] == 0 and after["inactive"]["total"] == 1
    assert before["new"] == after["new"] == {"total": 1, "unread": 1}

    # The user writes again: pending (waiting), whatever the clock says.
    _in(db, account, "in.3", number, outside)
    assert _shown(db, account, number, outside) == State.pending


def test_a_late_message_older_than_the_agents_answer_does_not_make_it_wait(
    db: Database, account: NewAccount
) -> None:
    t0 = _start()
    number = phone(1)
    [ann] = _agents(db, account, "ann")
    _in(db, account, "in.1", number, t0)
    c = _conversation(db, account, number)
    _reply(db, account, c.id, Reply(text="Hi"), Agent(ann), t0 + timedelta(minutes=5))
    # A message the user wrote at +2 min (before the answer) arrives after it: kept, but nobody waits.
    assert _in(db, account, "in.late", number, t0 + timedelta(minutes=2), "also this")
    c = _conversation(db, account, number)
    assert (c.state, c.waiting_since) == (State.active, None)
    assert c.last_inbound_at == t0 + timedelta(minutes=2)
    with db.session() as session:
        lines = [(i.who, i.text) for i in conversations.thread(session, c)]
    assert lines == [("user", "hi"), ("user", "also this"), ("agent", "Hi")]
    # One written after the answer does.
    _in(db, account, "in.3", number, t0 + timedelta(minutes=6))
    c = _conversation(db, account, number)
    assert (c.state, c.waiting_since) == (State.pending, t0 + timedelta(minutes=6))


# --- the 24-hour rule ---------------------------------------------------------------------------------


def test_free_text_is_refused_after_the_window_closed(db: Database, account: NewAccount) -> None:
    t0 = _start()
    number = phone(1)
    [ann] = _agents(db, account, "ann")
    _in(db, account, "in.1", number, t0)
    c = _conversation(db, account, number)
    accepted = _reply(db, account, c.id, Reply(text="Just in time"), Agent(ann), t0 + JUST_INSIDE)
    assert (accepted.state, accepted.text, accepted.conversation_id) == ("queued", "Just in time", c.id)
    message = _refused(
        409,
        "window_closed",
        lambda: _reply(db, account, c.id, Reply(text="Too late"), Agent(ann), t0 + JUST_OUTSIDE),
    )
    closed = t0 + timedelta(hours=24)
    assert f"closed at {closed:%Y-%m-%d %H:%M} UTC" in message and "template" in message
    # A file is free-form too.
    with db.session() as session:
        file_id = conversations.store_media(
            session, account.account_id, b"%PDF-1.4", "application/pdf", "a.pdf"
        ).id
    _refused(
        409,
        "window_closed",
        lambda: _reply(db, account, c.id, Reply(media_id=file_id), Agent(ann), t0 + JUST_OUTSIDE),
    )
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 1


def test_a_template_goes_after_the_window_only_with_consent(db: Database, account: NewAccount) -> None:
    t0 = _start()
    known, unknown = phone(1), phone(2)
    insert_profiles(db, account.account_id, [{"identity": "u1", "phone": known}])
    [ann] = _agents(db, account, "ann")
    template_id = _template(db, account, variables=2)
    _in(db, account, "in.1", known, t0)
    _in(db, account, "in.2", unknown, t0)  # a number Tidings did not know: opted out
    late = t0 + JUST_OUTSIDE
    opted_in = _conversation(db, account, known)
    _refused(
        422,
        "template_values",
        lambda: _reply(
            db, account, opted_in.id, Reply(template_id=template_id, params=["one"]), Agent(ann), late
        ),
    )
    queued = _reply(
        db,
        account,
        opted_in.id,
        Reply(template_id=template_id, params=["{{ Profile.Name }}", "x"]),
        Agent(ann),
        late,
    )
    assert (queued.template_id, queued.params, queued.text) == (
        template_id,
        ["{{ Profile.Name }}", "x"],
        None,
    )
    opted_out = _conversation(db, account, unknown)
    _refused(
        409,
        "not_opted_in",
        lambda: _reply(
            db, account, opted_out.id, Reply(template_id=template_id, params=["a", "b"]), Agent(ann), late
        ),
    )


def _mark(db: Database, account: NewAccount, now: datetime) -> Any:
    with db.session() as session:
        claimed = claim_batch(session, 100, LEASE, now, token="w1-1")
    with db.session() as session:
        return mark_dispatched(
            session, account.account_id, [(c.id, c.token, c.to) for c in claimed], now, lease=LEASE
        )


def test_the_window_is_decided_again_when_the_reply_leaves(db: Database, account: NewAccount) -> None:
    """A free-text reply queued inside the window but reaching its dispatch mark after it closed is
    skipped ``window_closed``; inside the window it goes, even to a user opted out of WhatsApp (the user
    wrote first: MSG-whatsapp is about what the business starts)."""
    t0 = _start()
    late, in_time = phone(1), phone(2)
    [ann] = _agents(db, account, "ann")
    for n, number in enumerate((late, in_time)):
        _in(db, account, f"in.{n}", number, t0)  # unknown numbers: opted out
        assert _profile(db, account, number).whatsapp_opt_in is False
    a = _reply(
        db, account, _conversation(db, account, late).id, Reply(text="a"), Agent(ann), t0 + JUST_INSIDE
    )
    b = _reply(
        db, account, _conversation(db, account, in_time).id, Reply(text="b"), Agent(ann), t0 + JUST_INSIDE
    )
    with db.session() as session:  # the worker was slow: b's row is due later than a's
        session.execute(
            update(Message)
            .where(Message.id == b.id)
            .values(next_attempt_at=t0 + JUST_INSIDE + timedelta(seconds=30))
        )

    decided = _mark(db, account, t0 + JUST_INSIDE + timedelta(seconds=1))
    assert decided.go == [a.id]
    decided = _mark(db, account, t0 + JUST_OUTSIDE)
    assert decided.go == [] and decided.refused == {b.id: "window_closed"}
    row = _row(db, b.id)
    assert (row.state, row.reason, row.dispatched_at) == ("skipped", "window_closed", None)
    assert "24-hour window" in (row.error_detail or "")


def test_a_template_reply_to_a_user_who_opted_out_since_is_skipped_at_the_mark(
    db: Database, account: NewAccount
) -> None:
    t0 = _start()
    number = phone(1)
    insert_profiles(db, account.account_id, [{"identity": "u1", "phone": number}])
    [ann] = _agents(db, account, "ann")
    template_id = _template(db, account)
    _in(db, account, "in.1", number, t0)
    c = _conversation(db, account, number)
    queued = _reply(
        db, account, c.id, Reply(template_id=template_id, params=["x"]), Agent(ann), t0 + timedelta(minutes=1)
    )
    with db.session() as session:  # an opt-out by a path that settles nothing (straight into the table)
        session.execute(update(Profile).where(Profile.phone == number).values(whatsapp_opt_in=False))
    decided = _mark(db, account, t0 + timedelta(minutes=2))
    assert decided.go == [] and decided.refused == {queued.id: "not_opted_in"}
    assert (_row(db, queued.id).state, _row(db, queued.id).reason) == ("skipped", "not_opted_in")


def test_a_template_to_a_user_not_opted_in_is_refused_inside_the_window_too(
    db: Database, account: NewAccount
) -> None:
    """It would be skipped ``not_opted_in`` where it leaves: the agent is told at once instead."""
    t0 = _start()
    number = phone(1)
    [ann] = _agents(db, account, "ann")
    template_id = _template(db, account)
    _in(db, account, "in.1", number, t0)  # unknown: opted out
    c = _conversation(db, account, number)
    _refused(
        409,
        "not_opted_in",
        lambda: _reply(
            db,
            account,
            c.id,
            Reply(template_id=template_id, params=["x"]),
            Agent(ann),
            t0 + timedelta(minutes=1),
        ),
    )


# --- two agents at once -------------------------------------------------------------------------------


def test_two_agents_taking_one_conversation_at_once_exactly_one_wins(
    db: Database, account: NewAccount
) -> None:
    """Two threads, each with its own session, started together by a barrier, take the same conversation
    (ten times over ten conversations): exactly one wins each time, the other is told who holds it."""
    t0 = _start()
    [ann, bob] = _agents(db, account, "ann", "bob")
    emails = {ann: "ann@acme.example", bob: "bob@acme.example"}
    for n in range(10):
        _in(db, account, f"in.{n}", phone(n), t0)
    for n in range(10):
        conversation_id = _conversation(db, account, phone(n)).id
        barrier = threading.Barrier(2)
        outcomes: dict[int, str] = {}

        def take(
            user_id: int,
            conversation_id: int = conversation_id,
            barrier: threading.Barrier = barrier,
            outcomes: dict[int, str] = outcomes,
        ) -> None:
            barrier.wait(10)
            try:
                with db.session() as session:
                    conversations.take(session, account.account_id, conversation_id, Agent(user_id))
                outcomes[user_id] = "won"
            except ApiError as refusal:
                outcomes[user_id] = f"{refusal.code}: {refusal.message}"

        threads = [threading.Thread(target=take, args=(user_id,)) for user_id in (ann, bob)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        winners = [u for u, outcome in outcomes.items() if outcome == "won"]
        assert len(outcomes) == 2 and len(winners) == 1, outcomes
        [winner] = winners
        [loser] = [u for u in outcomes if u != winner]
        assert outcomes[loser].startswith(f"held_by_other: {emails[winner]} holds this conversation")
        assert _conversation(db, account, phone(n)).assignee_id == winner
    # Taking what one holds already changes nothing; an admin may take it over by assigning.
    c = _conversation(db, account, phone(0))
    _do(db, conversations.take, account.account_id, c.id, Agent(c.assignee_id))
    other = bob if c.assignee_id == ann else ann
    _do(db, conversations.assign, account.account_id, c.id, other, Agent(None, admin=True))
    assert _conversation(db, account, phone(0)).assignee_id == other


def test_only_the_holder_or_an_admin_changes_a_held_conversation(db: Database, account: NewAccount) -> None:
    t0 = _start()
    number = phone(1)
    [ann, bob] = _agents(db, account, "ann", "bob")
    _in(db, account, "in.1", number, t0)
    c = _conversation(db, account, number)
    _do(db, conversations.take, account.account_id, c.id, Agent(ann))
    now = t0 + timedelta(minutes=1)
    for work in (
        lambda: _reply(db, account, c.id, Reply(text="mine"), Agent(bob), now),
        lambda: _do(db, conversations.set_labels, account.account_id, c.id, ["vip"], Agent(bob)),
        lambda: _do(db, conversations.assign, account.account_id, c.id, None, Agent(bob)),
        lambda: _do(db, conversations.take, account.account_id, c.id, Agent(bob)),
    ):
        assert "ann@acme.example holds this conversation" in _refused(409, "held_by_other", work)
    _refused(
        403, "forbidden", lambda: _do(db, conversations.assign, account.account_id, c.id, bob, Agent(ann))
    )
    _refused(422, "user_required", lambda: _do(db, conversations.take, account.account_id, c.id, Agent(None)))
    # The holder gives it back; an admin answers over anyone.
    _do(db, conversations.assign, account.account_id, c.id, None, Agent(ann))
    _do(db, conversations.take, account.account_id, c.id, Agent(bob))
    _reply(db, account, c.id, Reply(text="admin here"), Agent(ann, admin=True), now)
    assert _conversation(db, account, number).assignee_id == bob


# --- inbound ------------------------------------------------------------------------------------------


def test_a_number_tidings_does_not_know_gets_a_profile_opted_out_with_its_whatsapp_name(
    db: Database, account: NewAccount
) -> None:
    t0 = _start()
    known, unknown = phone(1), phone(2)
    insert_profiles(
        db, account.account_id, [{"identity": "u1", "phone": known, "properties": {"Name": "Kim"}}]
    )
    _in(db, account, "in.1", unknown, t0, "hello?", profile_name="Sheena Nelson")
    _in(db, account, "in.2", known, t0, "hi", profile_name="Someone Else")
    created = _profile(db, account, unknown)
    assert created.identity == unknown and created.whatsapp_opt_in is False
    assert created.properties["Name"] == "Sheena Nelson" and created.properties["MSG-whatsapp"] is False
    assert _profile(db, account, known).properties["Name"] == "Kim"  # a known profile is left alone
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Profile)) == 2
    c = _conversation(db, account, unknown)
    assert (c.profile_id, c.state, c.preview) == (created.id, State.new, "hello?")


def test_a_repeated_webhook_keeps_each_message_once(db: Database, account: NewAccount) -> None:
    t0 = _start()
    number = phone(1)
    insert_profiles(db, account.account_id, [{"identity": "u1", "phone": number}])
    assert _in(db, account, "in.1", number, t0, "STOP")
    for _ in range(3):
        assert not _in(db, account, "in.1", number, t0, "STOP")
    assert _in(db, account, "in.2", number, t0 + timedelta(seconds=1), "why")
    assert not _in(db, account, "in.2", number, t0 + timedelta(seconds=1), "why")
    with db.session() as session:
        kept = session.scalars(select(InboundMessage.provider_message_id).order_by(InboundMessage.id)).all()
        confirmations = session.scalars(
            select(Message.text).where(Message.conversation_id.is_not(None))
        ).all()
    assert kept == ["in.1", "in.2"]
    assert _conversation(db, account, number).unread == 2
    assert confirmations == [
        "You will no longer receive WhatsApp messages from us. Reply START to subscribe again."
    ]


def test_reordered_webhooks_keep_each_message_once_and_the_last_word_holds(
    db: Database, account: NewAccount
) -> None:
    """STOP then START, and START then STOP, each delivered in reverse (and then again): the person's
    last word holds, and each message is in the thread once, in the order written."""
    t0 = _start()
    back_in, out = phone(1), phone(2)
    insert_profiles(
        db, account.account_id, [{"identity": "a", "phone": back_in}, {"identity": "b", "phone": out}]
    )
    later = t0 + timedelta(minutes=1)
    arrivals = [
        ("a.2", back_in, later, "START"),
        ("a.1", back_in, t0, "STOP"),
        ("b.2", out, later, "STOP"),
        ("b.1", out, t0, "START"),
    ]
    assert [_in(db, account, mid, n, at, text) for mid, n, at, text in arrivals] == [True] * 4
    assert [_in(db, account, mid, n, at, text) for mid, n, at, text in reversed(arrivals)] == [False] * 4
    assert _profile(db, account, back_in).whatsapp_opt_in is True
    assert _profile(db, account, out).whatsapp_opt_in is False
    for number, words in ((back_in, ["STOP", "START"]), (out, ["START", "STOP"])):
        c = _conversation(db, account, number)
        with db.session() as session:
            assert [i.text for i in conversations.thread(session, c) if i.who == "user"] == words
        assert (c.last_inbound_at, c.unread, c.preview) == (later, 2, words[1])


def test_the_stop_confirmation_is_queued_once_and_only_when_the_account_wants_it(
    db: Database, account: NewAccount
) -> None:
    t0 = _start()
    numbers = [phone(n) for n in range(3)]
    insert_profiles(
        db, account.account_id, [{"identity": f"u{n}", "phone": p} for n, p in enumerate(numbers)]
    )

    def confirmations(number: str) -> list[tuple[str | None, str]]:
        with db.session() as session:
            return [
                (m.text, m.state)
                for m in session.scalars(
                    select(Message)
                    .where(Message.to_phone == number, Message.conversation_id.is_not(None))
                    .order_by(Message.id)
                )
            ]

    # STOP, then STOP again, then START: one confirmation per keyword message (and a repeated webhook of
    # one of them adds none).
    _in(db, account, "s.1", numbers[0], t0, "Stop")
    _in(db, account, "s.2", numbers[0], t0 + timedelta(seconds=1), "STOP")
    _in(db, account, "s.2", numbers[0], t0 + timedelta(seconds=1), "STOP")
    _in(db, account, "s.3", numbers[0], t0 + timedelta(seconds=2), "start")
    bye = "You will no longer receive WhatsApp messages from us. Reply START to subscribe again."
    welcome = "You are subscribed to WhatsApp messages from us again. Reply STOP to unsubscribe."
    assert confirmations(numbers[0]) == [(bye, "queued"), (bye, "queued"), (welcome, "queued")]
    # The account's own words.
    _settings(db, account, consent_replies={"opt_out": "Bye from Acme."})
    _in(db, account, "s.4", numbers[1], t0, "STOP")
    assert confirmations(numbers[1]) == [("Bye from Acme.", "queued")]
    # Turned off: the opt-out holds, no message is queued.
    _settings(db, account, consent_replies={"enabled": False})
    _in(db, account, "s.5", numbers[2], t0, "STOP")
    assert _profile(db, account, numbers[2]).whatsapp_opt_in is False
    assert confirmations(numbers[2]) == []


def test_a_stop_settles_queued_campaign_messages_but_not_the_confirmation(
    db: Database, account: NewAccount
) -> None:
    number = phone(1)
    campaign_id = running_campaign(db, account.account_id, [number])
    _in(db, account, "in.1", number, utcnow(), "STOP")
    with db.session() as session:
        rows = session.execute(
            select(Message.campaign_id, Message.state, Message.reason).order_by(Message.id)
        ).all()
    assert [tuple(r) for r in rows] == [(campaign_id, "skipped", "not_opted_in"), (None, "queued", None)]
    decided = _mark(db, account, utcnow())
    assert len(decided.go) == 1 and _row(db, decided.go[0]).conversation_id is not None


# --- labels, notes, saved replies ----------------------------------------------------------------------


def test_labels_and_notes(db: Database, account: NewAccount) -> None:
    t0 = _start()
    [ann] = _agents(db, account, "ann")
    _in(db, account, "in.1", phone(1), t0)
    c = _conversation(db, account, phone(1))
    assert _do(
        db, conversations.set_labels, account.account_id, c.id, [" VIP", "vip", "refund ", ""], Agent(ann)
    ) == [
        "refund",
        "vip",
    ]
    assert _do(db, conversations.set_labels, account.account_id, c.id, ["vip"], Agent(ann)) == ["vip"]
    with db.session() as session:
        assert conversations.labels_of(session, [c.id]) == {c.id: ["vip"]}
    _refused(
        422,
        "invalid_labels",
        lambda: _do(
            db, conversations.set_labels, account.account_id, c.id, [f"l{n}" for n in range(21)], Agent(ann)
        ),
    )
    _refused(
        422,
        "invalid_labels",
        lambda: _do(db, conversations.set_labels, account.account_id, c.id, ["x" * 41], Agent(ann)),
    )

    note = _do(db, conversations.add_note, account.account_id, c.id, "  called them back  ", Agent(ann))
    assert note.text == "called them back"
    _refused(
        422,
        "invalid_note",
        lambda: _do(db, conversations.add_note, account.account_id, c.id, "  ", Agent(ann)),
    )
    with db.session() as session:
        lines = [
            (i.who, i.text, i.author)
            for i in conversations.thread(session, _conversation(db, account, phone(1)))
        ]
    assert ("note", "called them back", "ann@acme.example") in lines
    with db.session() as session:  # a note is never sent
        assert session.scalar(select(func.count()).select_from(Message)) == 0
    _refused(
        404,
        "not_found",
        lambda: _do(db, conversations.add_note, account.account_id, c.id + 99, "x", Agent(ann)),
    )


def test_saved_replies(db: Database, account: NewAccount) -> None:
    saved = _do(db, conversations.save_reply, account.account_id, "/Thanks", "  Thank you!  ")
    assert (saved.shortcut, saved.text) == ("thanks", "Thank you!")
    assert "/thanks is already" in _refused(
        409,
        "shortcut_taken",
        lambda: _do(db, conversations.save_reply, account.account_id, "THANKS", "again"),
    )
    _refused(
        422,
        "invalid_shortcut",
        lambda: _do(db, conversations.save_reply, account.account_id, "two words", "x"),
    )
    _refused(422, "invalid_text", lambda: _do(db, conversations.save_reply, account.account_id, "empty", " "))
    _do(db, conversations.save_reply, account.account_id, "bye", "Bye!")
    with db.session() as session:
        assert [s.shortcut for s in conversations.saved_replies(session, account.account_id)] == [
            "bye",
            "thanks",
        ]
    _do(db, conversations.delete_saved_reply, account.account_id, saved.id)
    _refused(
        404, "not_found", lambda: _do(db, conversations.delete_saved_reply, account.account_id, saved.id)
    )
    with db.session() as session:
        assert [s.shortcut for s in conversations.saved_replies(session, account.account_id)] == ["bye"]


# --- the inbox: counts and filters --------------------------------------------------------------------


def test_counts_and_filters(db: Database, account: NewAccount) -> None:
    t0 = _start()
    numbers = [phone(n) for n in range(5)]
    # numbers[2] answers a campaign message; the others write on their own.
    [campaign_message] = _sent_campaign(db, account, [numbers[2]], t0 - timedelta(hours=1))
    with db.session() as session:  # through ingest: it keeps the name's search key
        ingest(
            session,
            account.account_id,
            [
                {
                    "identity": "asha",
                    "type": "profile",
                    "profileData": {"Phone": numbers[0], "Name": "Asha Rao"},
                },
                {"identity": "ben", "type": "profile", "profileData": {"Phone": numbers[1], "Name": "Ben"}},
            ],
        )
    [ann, bob] = _agents(db, account, "ann", "bob")
    _in(db, account, "in.0", numbers[0], t0, "where is my order?")
    _in(db, account, "in.1", numbers[1], t0 + timedelta(seconds=1), "hello")
    _in(
        db, account, "in.2", numbers[2], t0 + timedelta(seconds=2), "yes please", context_message_id="wamid.0"
    )
    _in(db, account, "in.3", numbers[3], t0 + timedelta(seconds=3), "refund")
    _in(db, account, "in.4", numbers[4], t0 + timedelta(seconds=4), "ok")
    c = {n: _conversation(db, account, n).id for n in numbers}
    now = t0 + timedelta(minutes=1)
    _reply(db, account, c[numbers[0]], Reply(text="Checking"), Agent(ann), now)  # active, ann
    _reply(db, account, c[numbers[1]], Reply(text="Hi Ben"), Agent(bob), now)  # active, bob
    _in(db, account, "in.5", numbers[1], now + timedelta(seconds=1), "thanks")  # pending, bob
    _do(db, conversations.take, account.account_id, c[numbers[3]], Agent(ann))
    _do(db, conversations.resolve, account.account_id, c[numbers[3]], Agent(ann))  # resolved, ann
    _do(db, conversations.set_labels, account.account_id, c[numbers[2]], ["vip"], Agent(None))
    _do(db, conversations.open_conversation, account.account_id, c[numbers[4]])  # new, read

    with db.session() as session:
        counted = conversations.counts(session, account.account_id, now=now)
    assert counted == {
        "new": {"total": 2, "unread": 1},
        "active": {"total": 1, "unread": 1},
        "pending": {"total": 1, "unread": 1},
        "resolved": {"total": 1, "unread": 1},
        "inactive": {"total": 0, "unread": 0},
    }
    assert _listed(db, account, now, state=State.new) == sorted([numbers[2], numbers[4]])
    assert _listed(db, account, now, state=State.pending) == [numbers[1]]
    assert _listed(db, account, now, campaign_id=campaign_message.campaign_id) == [numbers[2]]
    assert _listed(db, account, now, assignee_id=ann) == sorted([numbers[0], numbers[3]])
    assert _listed(db, account, now, assignee_id=0) == sorted([numbers[2], numbers[4]])
    assert _listed(db, account, now, label="VIP") == [numbers[2]]
    assert _listed(db, account, now, label="none") == []
    assert _listed(db, account, now, q="asha") == [numbers[0]]  # the profile's name
    assert _listed(db, account, now, q=numbers[3][-6:]) == [numbers[3]]  # the number
    assert _listed(db, account, now, q="ORDER") == [numbers[0]]  # the user's words
    assert _listed(db, account, now, q="thanks") == [numbers[1]]
    assert _listed(db, account, now, state=State.new, assignee_id=0, label="vip") == [numbers[2]]
    with db.session() as session:  # the oldest waiting first, then those nobody waits for
        order = [
            i.conversation.phone
            for i in conversations.list_conversations(session, account.account_id, Filters(), now=now)
        ]
    assert order[:3] == [numbers[2], numbers[4], numbers[1]]


def test_the_same_key_twice_queues_one_reply(db: Database, account: NewAccount) -> None:
    """A client that sends its reply again (a time-out, a double click) with the same key sends it once."""
    t0 = _start()
    [ann] = _agents(db, account, "ann")
    _in(db, account, "in.1", phone(1), t0)
    c = _conversation(db, account, phone(1))
    now = t0 + timedelta(minutes=1)
    first = _reply(db, account, c.id, Reply(text="On it", key="k-1"), Agent(ann), now)
    again = _reply(db, account, c.id, Reply(text="On it", key="k-1"), Agent(ann), now)
    other = _reply(db, account, c.id, Reply(text="On it"), Agent(ann), now)  # no key: another reply
    assert first.id == again.id != other.id
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 2


def test_the_thread_shows_what_a_campaign_message_said_even_without_its_values(
    db: Database, account: NewAccount
) -> None:
    """The inbox page fills the template's body with the values a message was sent with; a message
    without them (or with fewer than the template has now) shows the body as written, never an error."""
    from tidings.templates.models import Template
    from tidings.web.pages.inbox import _campaign_bodies

    campaign_id = running_campaign(db, account.account_id, [phone(1), phone(2)])
    with db.session() as session:
        session.execute(update(Template).values(body="Hi {{1}}, see you", variable_count=1))
        of_campaign = select(Message.id).where(Message.campaign_id == campaign_id).order_by(Message.id)
        ids = list(session.scalars(of_campaign))
        session.execute(update(Message).where(Message.id == ids[0]).values(params=["Asha"]))
    with db.read() as session:
        assert _campaign_bodies(session, account.account_id, ids) == {
            ids[0]: "Hi Asha, see you",
            ids[1]: "Hi {{1}}, see you",
        }
        assert _campaign_bodies(session, "another-account", ids) == {}
