"""TestService: tests and their versions. Every update stores a new version; runs pin theirs."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.state.convert import test_to_proto
from callmeter.state.models import Project, Run, Test, TestVersion, Worker, WorkerToken
from callmeter.v1 import common_pb2, tests_pb2, workers_pb2
from services.api.auth import EDITOR, VIEWER, Principal, project_for, project_or_only
from services.api.paging import page
from callmeter.common.spec_check import Capabilities, capabilities, check_spec


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


def _version(session: Session, test: Test, version: int) -> TestVersion:
    row = session.get(TestVersion, (test.id, version or test.current_version))
    if row is None:
        raise CallmeterError(ErrorCode.NOT_FOUND, f"test {test.id!r} has no version {version}")
    return row


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
    test = _test(session, principal, request.test_id, VIEWER, "reading a test")
    return test_to_proto(test, _version(session, test, request.version))


def list_tests(session: Session, principal: Principal,
               request: tests_pb2.ListTestsRequest) -> tests_pb2.ListTestsResponse:
    """Newest versions of the tests of a project, or of every project the caller may see."""
    query = (sa.select(Test, TestVersion)
             .join(TestVersion, sa.and_(TestVersion.test_id == Test.id, TestVersion.version == Test.current_version))
             .order_by(Test.created_at, Test.id))
    if request.project_id:
        project_for(session, principal, request.project_id, VIEWER, "listing tests")
        query = query.where(Test.project_id == request.project_id)
    else:
        query = query.where(Test.project_id.in_(sa.select(Project.id).where(principal.sees_project())))
    if not request.include_archived:
        query = query.where(Test.archived.is_(False))
    rows, next_page = page(session, query, request.page)
    return tests_pb2.ListTestsResponse(tests=[test_to_proto(row.Test, row.TestVersion) for row in rows],
                                       page=next_page)


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
