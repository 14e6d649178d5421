"""The configuration-and-state schema (SQLite embedded, PostgreSQL in production).

Conventions every repository relies on:

* Ids are uuid4 hex strings (32 characters) generated on insert.
* Timestamps are timezone-aware and stored in UTC; values read back are aware UTC datetimes
  on every backend.
* Enum-like columns hold the protobuf enum value's NAME (e.g. ``"RUN_STATE_QUEUED"``), so the
  database needs no migration when a proto enum gains a value.
* Protobuf payloads (TestSpec, WorkerCapacity, RunSummary) are their serialized bytes.

Changing a model needs a new revision in ``callmeter/state/migrations/versions``; a test checks
that the migrated schema equals these models.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from callmeter.v1 import common_pb2, runs_pb2

# Constraint names are part of the schema: Alembic needs them to alter or drop a constraint, and
# SQLite would otherwise leave them unnamed while PostgreSQL invents its own.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID_LENGTH = 32
NAME_LENGTH = 255
ENUM_NAME_LENGTH = 32  # the longest proto enum name stored today is 26 characters

RUN_STATE_QUEUED = runs_pb2.RunState.Name(runs_pb2.RUN_STATE_QUEUED)
ROLE_UNSPECIFIED = common_pb2.EndpointRole.Name(common_pb2.ENDPOINT_ROLE_UNSPECIFIED)
VERDICT_UNSPECIFIED = runs_pb2.Verdict.Name(runs_pb2.VERDICT_UNSPECIFIED)


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(sa.TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that only accepts aware datetimes and always returns UTC.

    SQLite has no time zone type: SQLAlchemy writes the wall-clock digits and drops the offset,
    and reads back naive values. Converting to UTC before writing and tagging UTC after reading
    gives the same behaviour as PostgreSQL's ``timestamptz``.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: state timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime, bytes: sa.LargeBinary}


def _id_column() -> Mapped[str]:
    return mapped_column(sa.String(ID_LENGTH), primary_key=True, default=new_id)


def _created_at_column() -> Mapped[datetime]:
    return mapped_column(default=utcnow)


def _updated_at_column() -> Mapped[datetime]:
    return mapped_column(default=utcnow, onupdate=utcnow)


# "Exactly one scope": a grant or a worker token belongs to an organization or to one project.
_ONE_SCOPE = "(organization_id IS NULL) <> (project_id IS NULL)"


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = _id_column()
    name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH), unique=True)
    created_at: Mapped[datetime] = _created_at_column()


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (sa.UniqueConstraint("organization_id", "name"),)

    id: Mapped[str] = _id_column()
    organization_id: Mapped[str] = mapped_column(sa.ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH))
    created_at: Mapped[datetime] = _created_at_column()


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = _id_column()
    name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH))
    # Unique when set; several users may have none (NULLs never collide).
    email: Mapped[str | None] = mapped_column(sa.String(320), unique=True)
    created_at: Mapped[datetime] = _created_at_column()


class RoleBinding(Base):
    """A role (a ``Role`` enum name) granted to a user on an organization or on one project."""

    __tablename__ = "role_bindings"
    __table_args__ = (
        sa.CheckConstraint(_ONE_SCOPE, name="one_scope"),
        # One binding per user and scope. Two constraints rather than one over
        # (user_id, organization_id, project_id): one scope column is always NULL, and NULLs never
        # collide in a unique constraint, so the three-column form would allow duplicates.
        sa.UniqueConstraint("user_id", "organization_id"),
        sa.UniqueConstraint("user_id", "project_id"),
    )

    id: Mapped[str] = _id_column()
    user_id: Mapped[str] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(sa.String(ENUM_NAME_LENGTH))
    organization_id: Mapped[str | None] = mapped_column(sa.ForeignKey("organizations.id", ondelete="CASCADE"))
    project_id: Mapped[str | None] = mapped_column(sa.ForeignKey("projects.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = _created_at_column()


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = _id_column()
    user_id: Mapped[str] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH))
    secret_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)  # callmeter.common.tokens.hash_secret
    created_at: Mapped[datetime] = _created_at_column()
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class WorkerToken(Base):
    __tablename__ = "worker_tokens"
    __table_args__ = (sa.CheckConstraint(_ONE_SCOPE, name="one_scope"),)

    id: Mapped[str] = _id_column()
    name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH))
    organization_id: Mapped[str | None] = mapped_column(sa.ForeignKey("organizations.id"))
    project_id: Mapped[str | None] = mapped_column(sa.ForeignKey("projects.id"))
    secret_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = _created_at_column()
    revoked_at: Mapped[datetime | None]


class Worker(Base):
    """A worker as last seen by the gateway; ``state`` is a ``WorkerState`` enum name."""

    __tablename__ = "workers"
    __table_args__ = (sa.UniqueConstraint("token_id", "name"),)

    id: Mapped[str] = _id_column()
    name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH))
    token_id: Mapped[str] = mapped_column(sa.ForeignKey("worker_tokens.id"))
    labels: Mapped[list[dict[str, str]]] = mapped_column(sa.JSON, default=list)  # [{"key": …, "value": …}]
    capacity: Mapped[bytes]  # WorkerCapacity
    version: Mapped[str] = mapped_column(sa.String(64))
    state: Mapped[str] = mapped_column(sa.String(ENUM_NAME_LENGTH))
    gateway_id: Mapped[str | None] = mapped_column(sa.String(NAME_LENGTH))
    peer: Mapped[str | None] = mapped_column(sa.String(NAME_LENGTH))
    last_heartbeat: Mapped[datetime | None]
    running_endpoints: Mapped[int] = mapped_column(default=0)
    connected_at: Mapped[datetime | None]
    # The worker process's instance_id from its last hello: another one means it restarted.
    instance_id: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH))
    updated_at: Mapped[datetime] = _updated_at_column()


class Test(Base):
    __tablename__ = "tests"
    __table_args__ = (sa.UniqueConstraint("project_id", "name"),)
    __test__ = False  # a model, not a pytest test class

    id: Mapped[str] = _id_column()
    project_id: Mapped[str] = mapped_column(sa.ForeignKey("projects.id"))
    name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH))
    archived: Mapped[bool] = mapped_column(default=False)
    current_version: Mapped[int]
    created_at: Mapped[datetime] = _created_at_column()
    updated_at: Mapped[datetime] = _updated_at_column()


class TestVersion(Base):
    """Every saved spec of a test; a run points at the exact version it ran."""

    __tablename__ = "test_versions"
    __test__ = False

    test_id: Mapped[str] = mapped_column(sa.ForeignKey("tests.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    spec: Mapped[bytes]  # TestSpec
    created_at: Mapped[datetime] = _created_at_column()
    created_by: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH))


class Run(Base):
    """One run of a test version; ``state`` and ``verdict`` are ``RunState`` / ``Verdict`` names."""

    __tablename__ = "runs"
    __table_args__ = (
        sa.ForeignKeyConstraint(["test_id", "test_version"], ["test_versions.test_id", "test_versions.version"]),
        sa.Index(None, "project_id", "created_at"),
        # The runs of one test over time (trends).
        sa.Index(None, "test_id", "created_at"),
        sa.Index(None, "state"),
    )

    id: Mapped[str] = _id_column()
    test_id: Mapped[str] = mapped_column(sa.ForeignKey("tests.id"))
    test_version: Mapped[int]
    project_id: Mapped[str] = mapped_column(sa.ForeignKey("projects.id"))
    state: Mapped[str] = mapped_column(sa.String(ENUM_NAME_LENGTH), default=RUN_STATE_QUEUED)
    verdict: Mapped[str] = mapped_column(sa.String(ENUM_NAME_LENGTH), default=VERDICT_UNSPECIFIED)
    reasons: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    created_at: Mapped[datetime] = _created_at_column()
    # Every part delivered to its worker (the start's first phase began), and the common start
    # of its endpoints (the second phase).
    dispatched_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    deadline_at: Mapped[datetime | None]
    started_by: Mapped[str | None] = mapped_column(sa.String(ID_LENGTH))
    summary: Mapped[bytes | None]  # RunSummary, once the run is judged
    updated_at: Mapped[datetime] = _updated_at_column()


class RunPlacement(Base):
    """Endpoints ``first_index`` … ``first_index + count - 1`` of a group, placed on one worker.

    ``state`` is an ``AssignmentState`` name; ``errors`` is a list of messages.
    """

    __tablename__ = "run_placements"

    run_id: Mapped[str] = mapped_column(sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    # Indexed: a worker that drops off fails every placement it holds.
    worker_id: Mapped[str] = mapped_column(sa.ForeignKey("workers.id"), primary_key=True, index=True)
    group_name: Mapped[str] = mapped_column(sa.String(NAME_LENGTH), primary_key=True)
    first_index: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    count: Mapped[int]
    role: Mapped[str] = mapped_column(sa.String(ENUM_NAME_LENGTH), default=ROLE_UNSPECIFIED,
                                      server_default=ROLE_UNSPECIFIED)  # EndpointRole name
    state: Mapped[str] = mapped_column(sa.String(ENUM_NAME_LENGTH))
    endpoints_failed: Mapped[int] = mapped_column(default=0)
    errors: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    # The endpoint-seconds the worker measured for the group (kept on the worker's first placement
    # of each group), and whether that count is final (the worker reported its part ended, or the
    # part was cancelled before it was sent): collection waits until that many are stored.
    endpoint_seconds: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    samples_final: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # Endpoints of the group that have registered, as the worker counts them (kept like
    # endpoint_seconds), and whether the worker has been told when this part begins.
    registered: Mapped[int] = mapped_column(default=0, server_default="0")
    begun: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
