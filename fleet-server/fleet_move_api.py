"""Moving the fleet over HTTP: issue a signed move, and see which boxes answered.

A plain `def` handler (a worker thread), like the commands': the directive and its audit entry commit
first, then it is published; a broker that cannot be reached leaves the move recorded with each box
`unsent` and the error, and issuing it again (a new serial) publishes it.
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio.from_thread
from fastapi import APIRouter, HTTPException, Path, Request

from . import fleet_move
from .api import DENIED, ERRORS, rule
from .auth import client_address, principal
from .downlink import PublishError, publish
from .fleet_move import MoveError, MoveIn, MoveOut
from .roles import Permission
from .schemas import ErrorOut
from .services import ServicesDep

router = APIRouter(prefix="/api", responses={**ERRORS, **DENIED})
REFUSED: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorOut, "description": "No devices to move."},
    422: {"model": ErrorOut, "description": "The request is invalid: `detail` names the field."},
}


@router.post(
    "/fleet/move", tags=["fleet"], dependencies=rule(Permission.FLEET_MOVE), responses=REFUSED,
    summary="Re-point the fleet (or some boxes) to another broker with a signed, retained move directive",
)  # fmt: skip
def move_fleet(body: MoveIn, request: Request, svc: ServicesDep) -> MoveOut:
    actor = principal(request).actor(client_address(request))
    try:
        with svc.sessions.begin() as session:
            serial, outgoing = fleet_move.prepare(session, svc.settings, actor, body)
    except MoveError as exc:
        raise HTTPException(status_code=exc.status, detail=exc.detail) from None
    error = None
    try:
        anyio.from_thread.run(publish, svc.settings, outgoing)
    except PublishError as exc:
        error = str(exc)
    with svc.sessions.begin() as session:
        fleet_move.mark_published(session, serial, error)
        result = fleet_move.status(session, serial)
    assert result is not None
    return result


@router.get(
    "/fleet/moves/{serial}", tags=["fleet"], dependencies=rule(Permission.FLEET_READ),
    responses={404: {"model": ErrorOut, "description": "No move with this serial."}},
    summary="One move and, per box, whether it was published and what the box answered",
)  # fmt: skip
def move_status(serial: Annotated[int, Path(ge=1)], svc: ServicesDep) -> MoveOut:
    with svc.sessions() as session:
        result = fleet_move.status(session, serial)
    if result is None:
        raise HTTPException(status_code=404, detail=f"no move with serial {serial}")
    return result
