"""Every error the API returns is JSON of one shape (ErrorOut): a sentence a person can act on, and
for invalid input the field-by-field list. Unknown routes, wrong methods, validation failures and
unexpected exceptions all go through here, so no client ever has to parse an HTML error page or
FastAPI's bare list of validation errors.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .schemas import ErrorOut, FieldError

log = logging.getLogger(__name__)


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


def _validation(exc: RequestValidationError) -> ErrorOut:
    errors = [FieldError(loc=[str(p) for p in e.get("loc", ())], msg=str(e.get("msg", "")), type=str(e.get("type", "")))
              for e in exc.errors()]  # fmt: skip
    first = errors[0] if errors else None
    detail = "invalid request"
    if first is not None:
        detail = f"invalid request: {_where(first.loc)}: {first.msg}"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
    return ErrorOut(detail=detail, errors=errors)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on this path (the router names only the first route's)."""
    methods: set[str] = set()
    for route in getattr(request.app.state, "api_routes", []):
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods |= set(route.methods or ())
    return sorted(methods)


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such path: {request.url.path}"
        elif exc.status_code == 405:
            allowed = _allowed_methods(request)
            detail = f"{request.method} is not allowed on {request.url.path}: use {', '.join(allowed)}"
            headers["Allow"] = ", ".join(allowed)
        elif exc.status_code == 400 and detail == "There was an error parsing the body":
            detail = "the request body is not valid JSON"
        return JSONResponse(
            status_code=exc.status_code, content=ErrorOut(detail=detail).model_dump(exclude_none=True),
            headers=headers or None,
        )  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content=_validation(exc).model_dump(mode="json"))

    @app.exception_handler(DataError)
    async def unstorable(request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the request carried (a NUL character in a PostgreSQL string,
        # a number out of a column's range): the client's input, not the server's fault.
        log.warning(
            "database refused a value from the request", extra={"path": request.url.path, "error": str(exc.orig)}
        )
        body = ErrorOut(detail="a value in the request cannot be stored or searched for (e.g. a NUL character)")
        return JSONResponse(status_code=422, content=body.model_dump(exclude_none=True))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc, extra={"path": request.url.path})
        body = ErrorOut(detail="internal server error: the server logged the cause; try again or tell the operator")
        return JSONResponse(status_code=500, content=body.model_dump(exclude_none=True))
