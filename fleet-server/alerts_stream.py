"""GET /api/alerts/stream: every alert step (a new alert, an acknowledgement, an assignment, a
close) as server-sent events of type `alert`, with the step's id as the SSE `id`.

Every step sent comes from the database, read in id order after the last one sent; the live feed
only wakes the stream. Step ids are committed in order (alerts.py), so reading "after the cursor"
never skips a step that commits later, and a step stored by another replica is as good as one stored
here: alert_wakeups.py wakes this replica's streams for those (LISTEN/NOTIFY on PostgreSQL, a short
poll everywhere). The subscription is taken before the first read, so a step committed between the
read and the wait still wakes it. A console that reconnects with `Last-Event-ID` (or `?after=`)
gets exactly what it missed, once, whichever replica it lands on; a fresh console (no cursor) gets
nothing old: it loads the list with GET /api/alerts once this stream's `ready` event has come and
then follows it. `ready` (data `{after, replayed}`, id = the cursor) ends the first replay, also an
empty one, so a console can tell "caught up, N missed steps replayed" from "still replaying", and its
EventSource has a Last-Event-ID to resume from even before the first alert.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from . import alerts
from .alert_schemas import AlertChangeOut, AlertOut, StepOut
from .api import DENIED, rule
from .pagination import MAX_ROW_ID
from .roles import Permission
from .services import Services, ServicesDep
from .stream import RECONNECT_MS, REPLAY_PAGE, _cursor

router = APIRouter(prefix="/api")


def _event(data: dict[str, Any], step_id: int) -> ServerSentEvent:
    return ServerSentEvent(event="alert", id=str(step_id), data=data)


def _after(svc: Services, cursor: int) -> list[AlertChangeOut]:
    with svc.sessions() as session:
        return [
            AlertChangeOut(step=StepOut.of(c.step), alert=AlertOut.of(c.alert))
            for c in alerts.steps_after(session, cursor, REPLAY_PAGE)
        ]


def _latest(svc: Services) -> int:
    with svc.sessions() as session:
        return alerts.latest_step_id(session)


@router.get(
    "/alerts/stream",
    response_class=EventSourceResponse,
    tags=["alerts"],
    summary="Live alerts: every new alert and every step of one (server-sent events, resumable)",
    dependencies=rule(Permission.ALERTS_READ),
    responses=DENIED,
)
async def alert_stream(
    svc: ServicesDep,
    last_event_id: Annotated[
        str | None, Header(description="Sent by EventSource on reconnect: replay steps after this id.")
    ] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_ROW_ID, description="Replay steps with an id above this (if no Last-Event-ID).")
    ] = None,
) -> AsyncIterable[ServerSentEvent]:
    cursor = _cursor(last_event_id, after)
    with svc.feed.subscribe() as sub:
        yield ServerSentEvent(comment="polewatch alerts", retry=RECONNECT_MS)
        replayed = 0
        if cursor is None:
            cursor = await run_in_threadpool(_latest, svc)
        wake = True  # a resume replays what was missed; a fresh start catches a step since _latest
        ready = False
        while True:
            if wake:
                while True:  # everything after the cursor, a page at a time
                    page = await run_in_threadpool(_after, svc, cursor)
                    for change in page:
                        yield _event(change.model_dump(mode="json"), change.step.id)
                        cursor = change.step.id
                        if not ready:
                            replayed += 1
                    if len(page) < REPLAY_PAGE:
                        break
            if not ready:
                # The first replay is over: the console can say "caught up N missed", and a fresh one
                # (no cursor) gets the position to resume from and loads the list only now.
                ready = True
                yield ServerSentEvent(event="ready", id=str(cursor), data={"after": cursor, "replayed": replayed})
            if sub.ended:
                return
            batch = await sub.next_batch()
            wake = any(item.kind == "alert" and (item.id is None or item.id > cursor) for item in batch)
