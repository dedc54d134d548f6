"""One way to page through every list of the API: `?limit=&cursor=` in, `{items, next}` out.

Cursors are keyset positions (the last row's key), not offsets, so a page boundary stays put while
the ingest keeps adding rows. They are opaque strings to clients: pass `next` back as `cursor`
until it is null. A cursor that this server did not hand out is a 422 with a clear message rather
than an empty page.
"""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import HTTPException, Query
from pydantic import BaseModel, Field

T = TypeVar("T")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Page size.")]
Cursor = Annotated[
    str | None,
    Query(min_length=1, max_length=200, description="`next` of the previous page; leave out for the first page."),
]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next: str | None = Field(description="Pass as `cursor` for the next page; null when this is the last page.")


def int_cursor(cursor: str | None) -> int | None:
    """The row id in an id cursor; 422 for anything else."""
    if cursor is None:
        return None
    if not cursor.isdigit() or len(cursor) > 19:
        raise HTTPException(status_code=422, detail=f"cursor {cursor[:40]!r} is not one this list handed out")
    return int(cursor)


def split(rows: list[T], limit: int) -> tuple[list[T], bool]:
    """Queries fetch limit + 1 rows: the extra one only says whether there is a next page."""
    return rows[:limit], len(rows) > limit
