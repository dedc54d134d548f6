"""Talk to the fleet server's enrolment endpoint: one request, a clear answer or a clear refusal.

Refusals (expired, used, unknown code...) come back as `EnrolmentRefusedError` with the server's reason
and what the technician should do; a server that cannot be reached is `ServerUnreachableError`, which the
flow turns into "prepared, enrolment pending" rather than a failure, because a pole without a link yet
is normal (offline-first).
"""

from __future__ import annotations

import time

import httpx
from pydantic import ValidationError

from polewatch.protocol.enrolment import EnrolmentGrant, EnrolmentRefused, EnrolmentRequest

ENROL_PATH = "/api/enrolment"

_WHAT_TO_DO = {
    "expired": "ask ops for a new code for this pole (codes expire after a few days)",
    "used": "this code already enrolled another box; ask ops for a new code, or revoke the other box first",
    "unknown": "check the code on the work order (12 letters and digits in three groups)",
    "revoked": "this code was withdrawn by ops; ask for a new one",
    "rate_limited": "too many attempts from here; wait a minute and run the command again",
}


class EnrolmentRefusedError(RuntimeError):
    def __init__(self, reason: str, detail: str) -> None:
        hint = _WHAT_TO_DO.get(reason, "")
        super().__init__(f"{detail}{': ' + hint if hint else ''}")
        self.reason = reason
        self.detail = detail


class ServerUnreachableError(RuntimeError):
    """No answer from the server (no link, DNS, TLS): the enrolment can complete later."""


def enrol(
    server_url: str, request: EnrolmentRequest, *, timeout_s: float = 20.0, attempts: int = 3, verify: bool | str = True
) -> EnrolmentGrant:
    """POST the request; retry transport failures a few times with a pause (a flaky 3G link)."""
    url = server_url.rstrip("/") + ENROL_PATH
    last_error: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(min(2.0 * attempt, 10.0))
        try:
            response = httpx.post(
                url,
                content=request.model_dump_json(),
                timeout=timeout_s,
                verify=verify,
                headers={"content-type": "application/json"},
            )
        except httpx.TransportError as exc:
            last_error = exc
            continue
        if response.status_code >= 500:
            last_error = RuntimeError(f"server error {response.status_code}")
            continue
        if response.status_code >= 400:
            try:
                refused = EnrolmentRefused.model_validate_json(response.content)
            except ValidationError:
                raise EnrolmentRefusedError(
                    "invalid", f"the server refused the enrolment ({response.status_code}: {response.text[:200]})"
                ) from None
            raise EnrolmentRefusedError(refused.reason, refused.detail)
        try:
            return EnrolmentGrant.model_validate_json(response.content)
        except ValidationError as exc:
            raise RuntimeError(f"the server's answer is not an enrolment grant: {exc}") from exc
    raise ServerUnreachableError(
        f"cannot reach {url} ({last_error}); the box keeps the request and enrols when the link is up"
    )
