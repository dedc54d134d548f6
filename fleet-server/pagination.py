"""One way to page through every list of the API: `?limit=&cursor=` in, `{items, next}` out.

Cursors are keyset positions (the last row's key), not offsets, so a page boundary stays put while
the ingest keeps adding rows. They are opaque strings to clients: pass `next` back as `cursor`
until it is null. A cursor that this server did not hand out is a 422 with a clear message rather
than an empty page.
"""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import HTTPException, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_ROW_ID = 2**63 - 1  # BIGINT on PostgreSQL, INTEGER on SQLite: a larger id cannot be stored, or asked for

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size.")]
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL: refuse it at the door, on both engines
IdCursor = Annotated[
    str | None,
    Query(pattern=r"^[0-9]{1,19}$", description="`next` of the previous page; leave out for the first page."),
]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next: str | None = Field(description="Pass as `cursor` for the next page; null when this is the last page.")


RowIdPath = Annotated[int, PathParam(ge=1, le=MAX_ROW_ID, description="The row id.")]


def int_cursor(cursor: str | None) -> int | None:
    """The row id in an id cursor; 422 for anything else."""
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit()) or int(cursor) > MAX_ROW_ID:
        raise HTTPException(status_code=422, detail=f"cursor {cursor[:40]!r} is not one this list handed out")
    return int(cursor)


def split(rows: list[T], limit: int) -> tuple[list[T], bool]:
    """Queries fetch limit + 1 rows: the extra one only says whether there is a next page."""
    return rows[:limit], len(rows) > limit
