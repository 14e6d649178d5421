"""Page tokens for the list RPCs.

A token is the opaque (base64) offset of the next page in the query's fixed order. Offsets may
skip or repeat a row when rows are inserted while a client pages; for listings that is fine,
and the token being opaque lets it become a keyset cursor later without a contract change.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.v1 import common_pb2

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page(session: Session, query: sa.Select[Any],
         request: common_pb2.PageRequest) -> tuple[list[sa.Row[Any]], common_pb2.PageResponse]:
    """One page of ``query`` (which must have a total order) and the token of the next one."""
    if request.page_size < 0:
        raise CallmeterError(ErrorCode.INVALID_ARGUMENT,
                             f"page.page_size: must not be negative (got {request.page_size})")
    size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    offset = _decode(request.page_token)
    rows = list(session.execute(query.offset(offset).limit(size + 1)).all())
    following = _encode(offset + size) if len(rows) > size else ""
    return rows[:size], common_pb2.PageResponse(next_page_token=following)


def _encode(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o{offset}".encode()).decode()


def _decode(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        offset = int(text.removeprefix("o")) if text.startswith("o") else -1
    except (binascii.Error, UnicodeDecodeError, ValueError):
        offset = -1
    if offset < 0:
        raise CallmeterError(ErrorCode.INVALID_ARGUMENT, "page.page_token: not a token this server returned")
    return offset
