"""Delivery of assigned alerts to their agency: signed webhooks, retries with backoff, dead letters.

Each POST carries `X-Polewatch-Timestamp` (Unix seconds) and `X-Polewatch-Signature:
sha256=<hex>`, the HMAC-SHA256 of `<timestamp>.<body>` under the agency's secret, so the agency
can check who sent it and refuse an old one replayed. The body is our alert JSON, or a CAP 1.2
document for agencies that take CAP. A 2xx answer delivers; anything else (an error status, a
refused connection, a timeout) is retried after `webhook_backoff_s * 2**(attempt-1)` until
`webhook_attempts`, and then the delivery is dead: it waits in the dead-letter list
(GET /api/alert-deliveries?state=dead) until an operator retries it.

Claiming is a lease: a worker moves a due delivery's next_attempt_at forward by the timeout,
conditioned on the value it read, so two replicas never send the same attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import httpx
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from polewatch.waiting import wait_event

from . import cap
from .alert_schemas import AlertOut
from .models import Agency, Alert, Delivery
from .settings import Settings

log = logging.getLogger(__name__)

POLL_S = 1.0
BATCH = 20
SIGNATURE = "X-Polewatch-Signature"
TIMESTAMP = "X-Polewatch-Timestamp"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiving agency does (and what the tests do with what they received)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass(frozen=True)
class Job:
    delivery_id: int
    url: str
    secret: str
    content_type: str
    body: bytes


def _claim(sessions: sessionmaker[Session], lease_s: float) -> list[Job]:
    now = datetime.now(timezone.utc)
    jobs: list[Job] = []
    with sessions.begin() as session:
        due = session.execute(
            select(Delivery, Agency, Alert).join(Agency, Agency.id == Delivery.agency_id)
            .join(Alert, Alert.id == Delivery.alert_id)
            .where(Delivery.state == "pending", Delivery.next_attempt_at <= now)
            .order_by(Delivery.next_attempt_at).limit(BATCH)
        ).all()  # fmt: skip
        for delivery, agency, alert in due:
            claimed = session.execute(
                update(Delivery)
                .where(Delivery.id == delivery.id, Delivery.next_attempt_at == delivery.next_attempt_at)
                .values(next_attempt_at=now + timedelta(seconds=lease_s))
            ).rowcount  # type: ignore[attr-defined]
            if claimed != 1 or not agency.webhook_url:
                continue
            if agency.format == "cap":
                body, content_type = cap.alert_xml(alert, agency, now), "application/xml; charset=utf-8"
            else:
                payload = {"alert": AlertOut.of(alert).model_dump(mode="json"), "agency": agency.name}
                body, content_type = json.dumps(payload, separators=(",", ":")).encode(), "application/json"
            jobs.append(Job(delivery.id, agency.webhook_url, agency.secret, content_type, body))
    return jobs


def _record(
    sessions: sessionmaker[Session], settings: Settings, job: Job, status: int | None, error: str | None
) -> str:
    now = datetime.now(timezone.utc)
    with sessions.begin() as session:
        delivery = session.get(Delivery, job.delivery_id, with_for_update=True)
        assert delivery is not None
        delivery.attempts += 1
        delivery.last_status = status
        delivery.last_error = error[:300] if error else None
        delivery.updated_at = now
        if error is None:
            delivery.state = "delivered"
        elif delivery.attempts >= settings.webhook_attempts:
            delivery.state = "dead"
        else:
            delay = settings.webhook_backoff_s * 2 ** (delivery.attempts - 1)
            delivery.next_attempt_at = now + timedelta(seconds=delay)
        return delivery.state


class Dispatcher:
    """The delivery loop of one server process; `wake()` after queueing a delivery skips the poll wait."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self._settings = settings
        self._sessions = sessions
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        timeout = self._settings.webhook_timeout_s
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            while True:
                try:
                    jobs = await run_in_threadpool(_claim, self._sessions, timeout * 2)
                    await asyncio.gather(*(self._send(client, job) for job in jobs))
                except Exception:  # a database outage must not end deliveries for good
                    log.exception("alert delivery loop failed; trying again")
                    jobs = []
                if not jobs:
                    self._wake.clear()
                    await wait_event(self._wake, POLL_S)

    async def _send(self, client: httpx.AsyncClient, job: Job) -> None:
        timestamp = str(int(time.time()))
        signature = sign(job.secret, timestamp, job.body)
        headers = {"Content-Type": job.content_type, TIMESTAMP: timestamp, SIGNATURE: signature}
        status: int | None = None
        error: str | None = None
        try:
            response = await client.post(job.url, content=job.body, headers=headers)
            status = response.status_code
            if not response.is_success:
                error = f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        state = await run_in_threadpool(_record, self._sessions, self._settings, job, status, error)
        log.info("alert delivery", extra={"delivery_id": job.delivery_id, "state": state, "error": error})
