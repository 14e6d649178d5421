"""TestService: tests and their versions. Every update stores a new version; runs pin theirs."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.state.convert import test_to_proto
from callmeter.state.models import Project, Run, Test, TestVersion, Worker, WorkerToken
from callmeter.v1 import common_pb2, tests_pb2, workers_pb2
from services.api.auth import (
    EDITOR,
    VIEWER,
    Principal,
    autoflush,
    project_for,
    project_or_only,
    read,
    require,
    require_in_project,
)
from services.api.paging import page
from callmeter.common.spec_check import Capabilities, capabilities, check_spec

_tests, _versions, _projects = Test.__table__, TestVersion.__table__, Project.__table__
#: What test_to_proto reads of a test and of its version; no column name is in both, so one row serves as both.
_TEST_COLUMNS = (_tests.c.id, _tests.c.project_id, _tests.c.archived, _tests.c.created_at, _tests.c.updated_at,
                 _versions.c.version, _versions.c.spec)


def _test_with_version(version: sa.ColumnElement[int]) -> sa.Select[Any]:
    """GetTest in one query: the test, its project's organization (for the role check) and the
    version asked for (NULL version columns when it has none)."""
    return (sa.select(*_TEST_COLUMNS, _projects.c.organization_id)
            .join(_projects, _projects.c.id == _tests.c.project_id)
            .outerjoin(_versions, sa.and_(_versions.c.test_id == _tests.c.id, _versions.c.version == version))
            .where(_tests.c.id == sa.bindparam("test_id")))


_TEST_CURRENT = _test_with_version(_tests.c.current_version)
_TEST_VERSION = _test_with_version(sa.bindparam("version"))
# ListTests: the tests with their current versions, oldest first; a call adds its filters.
_LIST_TESTS = (sa.select(*_TEST_COLUMNS)
               .join(_versions, sa.and_(_versions.c.test_id == _tests.c.id,
                                        _versions.c.version == _tests.c.current_version))
               .order_by(_tests.c.created_at, _tests.c.id))


def project_capabilities(session: Session, project: Project) -> Capabilities:
    """What the workers that may serve the project (its own tokens' and its organization's) can do."""
    blobs = session.scalars(sa.select(Worker.capacity).join(WorkerToken, Worker.token_id == WorkerToken.id).where(
        sa.or_(WorkerToken.project_id == project.id, WorkerToken.organization_id == project.organization_id)))
    return capabilities([workers_pb2.WorkerCapacity.FromString(blob) for blob in blobs])


def spec_error(violations: list[common_pb2.FieldViolation]) -> CallmeterError:
    """INVALID_ARGUMENT with every problem, one ``path: description`` per line."""
    lines = "\n".join(f"{v.field}: {v.description}" for v in violations)
    return CallmeterError(ErrorCode.INVALID_ARGUMENT, f"the test spec has {len(violations)} problem(s):\n{lines}")


def _check_spec(session: Session, project: Project, spec: tests_pb2.TestSpec) -> None:
    violations = check_spec(spec, project_capabilities(session, project))
    if violations:
        raise spec_error(violations)


def _name_taken(session: Session, project_id: str, name: str, other_than: str = "") -> None:
    same = sa.select(Test.id).where(Test.project_id == project_id, Test.name == name, Test.id != other_than)
    if session.scalar(same):
        raise CallmeterError(ErrorCode.ALREADY_EXISTS, f"the project has a test named {name!r}; update it instead")


def _test(session: Session, principal: Principal, test_id: str, needed: int, what: str, lock: bool = False) -> Test:
    test = session.get(Test, test_id, with_for_update=lock) if test_id else None
    if test is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no test {test_id!r}")
    project_for(session, principal, test.project_id, needed, what)
    return test


def create_test(session: Session, principal: Principal, request: tests_pb2.CreateTestRequest) -> tests_pb2.Test:
    project = project_or_only(session, principal, request.project_id, EDITOR, "creating a test")
    _check_spec(session, project, request.spec)
    _name_taken(session, project.id, request.spec.name)
    test = Test(project_id=project.id, name=request.spec.name, current_version=1)
    session.add(test)
    session.flush()
    version = TestVersion(test_id=test.id, version=1, spec=request.spec.SerializeToString(),
                          created_by=principal.user.id)
    session.add(version)
    session.flush()
    return test_to_proto(test, version)


def update_test(session: Session, principal: Principal, request: tests_pb2.UpdateTestRequest) -> tests_pb2.Test:
    """A new version (which may rename the test); an archived test comes back into use."""
    # Locked so that two concurrent updates cannot both take the next version number.
    test = _test(session, principal, request.test_id, EDITOR, "updating a test", lock=True)
    _check_spec(session, session.get_one(Project, test.project_id), request.spec)
    _name_taken(session, test.project_id, request.spec.name, other_than=test.id)
    test.name = request.spec.name
    test.current_version += 1
    test.archived = False
    version = TestVersion(test_id=test.id, version=test.current_version, spec=request.spec.SerializeToString(),
                          created_by=principal.user.id)
    session.add(version)
    session.flush()
    return test_to_proto(test, version)


def get_test(session: Session, principal: Principal, request: tests_pb2.GetTestRequest) -> tests_pb2.Test:
    if not request.test_id:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no test {request.test_id!r}")
    if request.version:
        row = read(session, _TEST_VERSION, {"test_id": request.test_id, "version": request.version}).first()
    else:
        row = read(session, _TEST_CURRENT, {"test_id": request.test_id}).first()
    if row is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"no test {request.test_id!r}")
    require(principal.role_in_project(row.project_id, row.organization_id), VIEWER, "reading a test")
    if row.version is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"test {row.id!r} has no version {request.version}")
    return test_to_proto(row, row)


def list_tests(session: Session, principal: Principal,
               request: tests_pb2.ListTestsRequest) -> tests_pb2.ListTestsResponse:
    """Newest versions of the tests of a project, or of every project the caller may see."""
    query = _LIST_TESTS
    if request.project_id:
        require_in_project(session, principal, request.project_id, VIEWER, "listing tests")
        query = query.where(_tests.c.project_id == request.project_id)
    else:
        query = query.where(_tests.c.project_id.in_(sa.select(_projects.c.id).where(principal.sees_project())))
    if not request.include_archived:
        query = query.where(_tests.c.archived.is_(False))
    autoflush(session)
    rows, next_page = page(session, query, request.page)
    return tests_pb2.ListTestsResponse(tests=[test_to_proto(row, row) for row in rows], page=next_page)


def delete_test(session: Session, principal: Principal,
                request: tests_pb2.DeleteTestRequest) -> tests_pb2.DeleteTestResponse:
    test = _test(session, principal, request.test_id, EDITOR, "deleting a test")
    if session.scalar(sa.select(Run.id).where(Run.test_id == test.id).limit(1)):
        test.archived = True
        return tests_pb2.DeleteTestResponse(archived=True)
    session.execute(sa.delete(TestVersion).where(TestVersion.test_id == test.id))
    session.delete(test)
    return tests_pb2.DeleteTestResponse(archived=False)


def validate_test(session: Session, principal: Principal,
                  request: tests_pb2.ValidateTestRequest) -> tests_pb2.ValidateTestResponse:
    project = project_or_only(session, principal, request.project_id, VIEWER, "validating a test")
    violations = check_spec(request.spec, project_capabilities(session, project))
    return tests_pb2.ValidateTestResponse(violations=violations)
