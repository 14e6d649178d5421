"""Principals kept for at most a second, so that a read does not look its token up every time.

Every RPC authenticates its token: a query of the token, its user and the user's role bindings,
more than half of what a GetRun costs. ``PrincipalCache`` keeps the principal a token named for
``ttl_s`` (one second), so a token revoked or a role changed anywhere (another API process,
`callmeter bootstrap` on the database) takes effect within that second, with no messaging.
Within this process it takes effect at once: a committed transaction of the sessions it watches
that wrote a token, a user or a role binding empties the cache (a caller that creates an
organization can use it on its next call).

What is never kept: an unknown, revoked or expired token (each is looked up again); a kept
principal is refused from the moment its token expires.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import chain
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from callmeter.common.tokens import hash_secret
from callmeter.state.models import ApiToken, RoleBinding, User, utcnow
from services.api.auth import Principal, authenticate

#: How long a principal is kept: the longest a revocation or a role change may take to be seen.
TTL_S = 1.0
#: Past this many entries, the expired ones are dropped (on a miss).
MAX_ENTRIES = 10_000

_PRINCIPAL_ROWS = (ApiToken, RoleBinding, User)
_WROTE = "callmeter.principals_written"  # a Session.info key


class PrincipalCache:
    """``authenticate`` with the principal kept ``ttl_s`` by token hash; safe to share between threads."""

    def __init__(self, sessions: sessionmaker[Session] | None = None, ttl_s: float = TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, Principal]] = {}  # token hash → (kept until, principal)
        self._generation = 0  # changed by clear(): a principal read before it is not kept
        if sessions is not None:
            sa.event.listen(sessions, "after_flush", _note_principal_writes)
            sa.event.listen(sessions, "after_commit", self._after_commit)

    def authenticate(self, session: Session, token: str) -> Principal:
        key = hash_secret(token)
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and now < entry[0]:
            principal = entry[1]
            if principal.expires_at is None or utcnow() < principal.expires_at:
                return principal
        generation = self._generation
        # The clock was read before the database: what is kept is never older than its deadline says.
        principal = authenticate(session, token)
        if generation == self._generation:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries = {k: e for k, e in self._entries.items() if now < e[0]}
            self._entries[key] = (now + self._ttl_s, principal)
        return principal

    def clear(self) -> None:
        self._generation += 1
        self._entries = {}

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(_WROTE, False):
            self.clear()


def _note_principal_writes(session: Session, _flush_context: Any) -> None:
    # After a flush the session still lists what it flushed as new, dirty and deleted.
    if any(isinstance(row, _PRINCIPAL_ROWS) for row in chain(session.new, session.dirty, session.deleted)):
        session.info[_WROTE] = True
