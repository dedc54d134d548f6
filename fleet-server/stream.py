"""GET /api/stream: the console's live feed, as server-sent events.

Event types:

- `devices`: the full device list, first thing on every (re)connection, so a console that was
  disconnected needs no separate reload and misses no device change;
- `device`: one device changed (presence online/offline, new health, first contact);
- `detection`: one stored detection, with the SSE `id` set to its row id.

Resume: the browser's EventSource sends the last `id` it saw as the `Last-Event-ID` header when it
reconnects; the stream then first replays every detection stored after that id, from the database,
before going live. The subscription to the live feed is taken *before* the replay query, and live
detections at or below the last replayed id are skipped, so nothing falls in the gap between the
two and nothing is sent twice. A client that cannot set headers can pass `?after=<id>`; a fresh
console asks for `?backlog=N` to start with the newest N detections.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy import Select
from starlette.concurrency import run_in_threadpool

from . import queries, scope
from .api import DENIED, rule
from .pagination import MAX_ROW_ID
from .roles import Permission
from .schemas import DeviceOut, EventOut
from .services import Services, ServicesDep

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api")

REPLAY_PAGE = 500
RECONNECT_MS = 2000


def _detection(event: EventOut | dict[str, Any], row_id: int) -> ServerSentEvent:
    data = event.model_dump(mode="json") if isinstance(event, EventOut) else event
    return ServerSentEvent(event="detection", id=str(row_id), data=data)


def _cursor(last_event_id: str | None, after: int | None) -> int | None:
    if last_event_id is not None and last_event_id.strip():
        try:
            return min(MAX_ROW_ID, max(0, int(last_event_id.strip())))
        except ValueError:
            log.warning("ignoring a Last-Event-ID that is not ours", extra={"last_event_id": last_event_id[:80]})
    return after


def _devices(svc: Services, only: Select[Any] | None) -> list[DeviceOut]:
    with svc.sessions() as session:
        return queries.all_devices(session, only)


def _after(svc: Services, cursor: int, only: Select[Any] | None) -> list[EventOut]:
    with svc.sessions() as session:
        return queries.events_after(session, cursor, REPLAY_PAGE, only)


def _latest(svc: Services, count: int, only: Select[Any] | None) -> list[EventOut]:
    with svc.sessions() as session:
        return queries.latest_events(session, count, only)


def _device_of(data: Any) -> str | None:
    return data.get("device_id") if isinstance(data, dict) else None


def _visible(svc: Services, only: Select[Any] | None) -> set[str] | None:
    """The device ids a scoped principal (a technician) may follow live; None: every device."""
    if only is None:
        return None
    with svc.sessions() as session:
        return set(session.scalars(only))


@router.get(
    "/stream",
    response_class=EventSourceResponse,
    tags=["stream"],
    summary="Live feed: device changes and new detections (server-sent events, resumable)",
    dependencies=rule(Permission.FLEET_READ),
    responses=DENIED,
)
async def stream(
    svc: ServicesDep,
    request: Request,
    last_event_id: Annotated[
        str | None, Header(description="Sent by EventSource on reconnect: replay detections after this id.")
    ] = None,
    after: Annotated[
        int | None,
        Query(ge=0, le=MAX_ROW_ID, description="Replay detections with an id above this (if no Last-Event-ID)."),
    ] = None,
    backlog: Annotated[
        int,
        Query(ge=0, le=500, description="On a fresh start (no cursor), first send the newest N detections."),
    ] = 0,
) -> AsyncIterable[ServerSentEvent]:
    cursor = _cursor(last_event_id, after)
    # A technician follows the boxes on their sites as they were when the stream opened; a box placed
    # there later shows after a reconnect (the console reconnects on its own).
    only = scope.device_filter(request)
    visible = await run_in_threadpool(_visible, svc, only)
    with svc.feed.subscribe() as sub:
        yield ServerSentEvent(comment="polewatch live feed", retry=RECONNECT_MS)
        devices = await run_in_threadpool(_devices, svc, only)
        yield ServerSentEvent(event="devices", data=[d.model_dump(mode="json") for d in devices])

        if cursor is None and backlog > 0:
            recent = await run_in_threadpool(_latest, svc, backlog, only)
            for event in recent:
                yield _detection(event, event.id)
            if recent:
                cursor = recent[-1].id
        elif cursor is not None:
            while True:  # page through everything missed: a console back from a long outage
                page = await run_in_threadpool(_after, svc, cursor, only)
                for event in page:
                    yield _detection(event, event.id)
                    cursor = event.id
                if len(page) < REPLAY_PAGE:
                    break

        while True:
            for item in await sub.next_batch():
                if visible is not None and _device_of(item.data) not in visible:
                    continue
                if item.kind == "detection" and item.id is not None:
                    if cursor is not None and item.id <= cursor:
                        continue  # already sent by the replay
                    cursor = item.id
                    yield _detection(item.data, item.id)
                elif item.kind != "alert":  # alerts have their own stream and permission (alerts_stream.py)
                    yield ServerSentEvent(event=item.kind, data=item.data)
            if sub.ended:
                # Lagged or shutting down: end the response; the browser reconnects with
                # Last-Event-ID and the replay fills whatever this subscription dropped.
                if sub.lagged:
                    log.warning("live stream fell behind; closing it so the client resumes")
                return
