"""The role matrix: every RPC's handler × five roles × organization or project scope, allowed and denied.

A role on the organization holds on all its projects; a role on a project only there, and never on
the organization itself. A refusal is PERMISSION_DENIED naming the role that was needed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from callmeter.common.errors import CallmeterError, ErrorCode
from callmeter.v1 import results_pb2, runs_pb2, tenancy_pb2, tests_pb2, workers_pb2
from services.api.auth import ADMIN, EDITOR, NO_ROLE, OWNER, RUNNER, VIEWER, role_name
from services.api.handlers import results, runs, tenancy, tests, workers
from tests.api.conftest import world_on
from tests.api.world import ROLES, World, valid_spec


@dataclass(frozen=True)
class Case:
    rpc: str
    needed: int
    #: "project": a role on the project or its organization counts; "organization": only one on the organization.
    scope: str
    make: Callable[[World], tuple[Callable[..., Any], Any]]


def binding(user_id: str, role: int, world: World, scope: str) -> tenancy_pb2.RoleBinding:
    message = tenancy_pb2.RoleBinding(user_id=user_id, role=role)
    setattr(message, f"{scope}_id", world.project if scope == "project" else world.organization)
    return message


CASES = [
    # TenancyService
    Case("CreateOrganization", NO_ROLE, "project",
         lambda w: (tenancy.create_organization, tenancy_pb2.CreateOrganizationRequest(name="new-org"))),
    Case("ListOrganizations", NO_ROLE, "project",
         lambda w: (tenancy.list_organizations, tenancy_pb2.ListOrganizationsRequest())),
    Case("CreateProject", ADMIN, "organization", lambda w: (
        tenancy.create_project, tenancy_pb2.CreateProjectRequest(organization_id=w.organization, name="new"))),
    Case("ListProjects", VIEWER, "project", lambda w: (
        tenancy.list_projects, tenancy_pb2.ListProjectsRequest(organization_id=w.organization))),
    Case("CreateUser", ADMIN, "project", lambda w: (tenancy.create_user, tenancy_pb2.CreateUserRequest(name="new"))),
    Case("ListUsers:project", ADMIN, "project",
         lambda w: (tenancy.list_users, tenancy_pb2.ListUsersRequest(project_id=w.project))),
    Case("ListUsers:organization", ADMIN, "organization",
         lambda w: (tenancy.list_users, tenancy_pb2.ListUsersRequest(organization_id=w.organization))),
    Case("GrantRole:project", ADMIN, "project", lambda w: (
        tenancy.grant_role, tenancy_pb2.GrantRoleRequest(binding=binding(w.org_member, RUNNER, w, "project")))),
    Case("GrantRole:organization", ADMIN, "organization", lambda w: (
        tenancy.grant_role, tenancy_pb2.GrantRoleRequest(binding=binding(w.member, RUNNER, w, "organization")))),
    Case("GrantRole:owner-of-project", OWNER, "project", lambda w: (
        tenancy.grant_role, tenancy_pb2.GrantRoleRequest(binding=binding(w.member, OWNER, w, "project")))),
    Case("GrantRole:owner-of-organization", OWNER, "organization", lambda w: (
        tenancy.grant_role, tenancy_pb2.GrantRoleRequest(binding=binding(w.member, OWNER, w, "organization")))),
    Case("RevokeRole:project", ADMIN, "project", lambda w: (
        tenancy.revoke_role, tenancy_pb2.RevokeRoleRequest(binding=binding(w.member, NO_ROLE, w, "project")))),
    Case("RevokeRole:organization", ADMIN, "organization", lambda w: (
        tenancy.revoke_role, tenancy_pb2.RevokeRoleRequest(binding=binding(w.org_member, NO_ROLE, w, "organization")))),
    Case("CreateApiToken:self", NO_ROLE, "project",
         lambda w: (tenancy.create_api_token, tenancy_pb2.CreateApiTokenRequest(name="mine"))),
    Case("CreateApiToken:project-member", ADMIN, "project", lambda w: (
        tenancy.create_api_token, tenancy_pb2.CreateApiTokenRequest(user_id=w.member, name="theirs"))),
    Case("CreateApiToken:organization-member", ADMIN, "organization", lambda w: (
        tenancy.create_api_token, tenancy_pb2.CreateApiTokenRequest(user_id=w.org_member, name="theirs"))),
    Case("CreateApiToken:role-on-project", ADMIN, "project", lambda w: (tenancy.create_api_token,
         tenancy_pb2.CreateApiTokenRequest(name="ci", role=RUNNER, project_id=w.project))),
    Case("CreateApiToken:role-on-organization", ADMIN, "organization", lambda w: (tenancy.create_api_token,
         tenancy_pb2.CreateApiTokenRequest(name="ci", role=VIEWER, organization_id=w.organization))),
    Case("CreateApiToken:owner-role", OWNER, "organization", lambda w: (tenancy.create_api_token,
         tenancy_pb2.CreateApiTokenRequest(name="ci", role=OWNER, organization_id=w.organization))),
    Case("ListApiTokens", NO_ROLE, "project", lambda w: (tenancy.list_api_tokens, tenancy_pb2.ListApiTokensRequest())),
    Case("RevokeApiToken:project-member", ADMIN, "project", lambda w: (
        tenancy.revoke_api_token, tenancy_pb2.RevokeApiTokenRequest(token_id=w.member_token))),
    Case("CreateWorkerToken:project", ADMIN, "project", lambda w: (
        tenancy.create_worker_token, tenancy_pb2.CreateWorkerTokenRequest(name="w", project_id=w.project))),
    Case("CreateWorkerToken:organization", ADMIN, "organization", lambda w: (
        tenancy.create_worker_token, tenancy_pb2.CreateWorkerTokenRequest(name="w", organization_id=w.organization))),
    Case("ListWorkerTokens:project", ADMIN, "project", lambda w: (
        tenancy.list_worker_tokens, tenancy_pb2.ListWorkerTokensRequest(project_id=w.project))),
    Case("ListWorkerTokens:organization", ADMIN, "organization", lambda w: (
        tenancy.list_worker_tokens, tenancy_pb2.ListWorkerTokensRequest(organization_id=w.organization))),
    Case("RevokeWorkerToken:project", ADMIN, "project", lambda w: (
        tenancy.revoke_worker_token, tenancy_pb2.RevokeWorkerTokenRequest(token_id=w.project_worker_token))),
    Case("RevokeWorkerToken:organization", ADMIN, "organization", lambda w: (
        tenancy.revoke_worker_token, tenancy_pb2.RevokeWorkerTokenRequest(token_id=w.organization_worker_token))),
    Case("WhoAmI", NO_ROLE, "project", lambda w: (tenancy.who_am_i, tenancy_pb2.WhoAmIRequest())),
    # WorkerService
    Case("ListWorkers", VIEWER, "project",
         lambda w: (workers.list_workers, workers_pb2.ListWorkersRequest(project_id=w.project))),
    Case("GetWorker:project", VIEWER, "project",
         lambda w: (workers.get_worker, workers_pb2.GetWorkerRequest(worker_id=w.project_worker))),
    Case("GetWorker:organization", VIEWER, "organization",
         lambda w: (workers.get_worker, workers_pb2.GetWorkerRequest(worker_id=w.organization_worker))),
    # TestService
    Case("CreateTest", EDITOR, "project", lambda w: (
        tests.create_test, tests_pb2.CreateTestRequest(project_id=w.project, spec=valid_spec("new")))),
    Case("UpdateTest", EDITOR, "project",
         lambda w: (tests.update_test, tests_pb2.UpdateTestRequest(test_id=w.test, spec=valid_spec()))),
    Case("GetTest", VIEWER, "project", lambda w: (tests.get_test, tests_pb2.GetTestRequest(test_id=w.test))),
    Case("ListTests", VIEWER, "project",
         lambda w: (tests.list_tests, tests_pb2.ListTestsRequest(project_id=w.project))),
    Case("DeleteTest", EDITOR, "project", lambda w: (tests.delete_test, tests_pb2.DeleteTestRequest(test_id=w.test))),
    Case("ValidateTest", VIEWER, "project", lambda w: (
        tests.validate_test, tests_pb2.ValidateTestRequest(project_id=w.project, spec=valid_spec()))),
    # RunService (StartRun, CancelRun and WatchRun: the handler the servicer runs before any other call)
    Case("StartRun", RUNNER, "project", lambda w: (
        functools.partial(runs.start_run, default_timeout_s=60), runs_pb2.StartRunRequest(test_id=w.test))),
    Case("GetRun", VIEWER, "project", lambda w: (runs.get_run, runs_pb2.GetRunRequest(run_id=w.run))),
    Case("ListRuns", VIEWER, "project", lambda w: (runs.list_runs, runs_pb2.ListRunsRequest(project_id=w.project))),
    Case("CancelRun", RUNNER, "project", lambda w: (runs.cancel_target, runs_pb2.CancelRunRequest(run_id=w.run))),
    Case("WatchRun", VIEWER, "project", lambda w: (runs.watch_target, runs_pb2.WatchRunRequest(run_id=w.run))),
    # RunService's results (the handler that authorizes before metrics-ingest is asked)
    Case("GetRunSummary", VIEWER, "project",
         lambda w: (results.results_target, runs_pb2.GetRunSummaryRequest(run_id=w.run))),
    Case("GetRunCodes", VIEWER, "project", lambda w: (results.results_target, runs_pb2.GetRunCodesRequest(run_id=w.run))),
    Case("GetRunSeries", VIEWER, "project", lambda w: (results.series_request, runs_pb2.GetRunSeriesRequest(
        run_id=w.run, metric="mos", group="callers", endpoint=1, step_s=5))),
    Case("GetWorstEndpoints", VIEWER, "project", lambda w: (
        results.worst_request, runs_pb2.GetWorstEndpointsRequest(run_id=w.run, metric="mos", limit=3))),
    Case("GetTestTrend", VIEWER, "project",
         lambda w: (results.trend_request, results_pb2.TrendRequest(test_id=w.test, metric="mos_avg"))),
    Case("ExportRunSamples", VIEWER, "project",
         lambda w: (results.export_request, runs_pb2.ExportRunSamplesRequest(run_id=w.run))),
]

CALLERS = [("none", ""), *[(role, scope) for role in ROLES for scope in ("organization", "project")]]


def allowed(case: Case, caller: tuple[str, str]) -> bool:
    if case.needed == NO_ROLE:
        return True
    role, scope = caller
    if role == "none" or (case.scope == "organization" and scope == "project"):
        return False
    return ROLES[role] >= case.needed


def check(world: World, case: Case, caller: tuple[str, str]) -> str | None:
    """None when the outcome is the expected one, else what went wrong."""
    handler, request = case.make(world)
    try:
        world.call(caller, handler, request)
    except CallmeterError as error:
        if allowed(case, caller):
            return f"{case.rpc} as {caller}: refused: {error.code.name}: {error.detail}"
        if error.code != ErrorCode.PERMISSION_DENIED or f"the {role_name(case.needed)} role" not in error.detail:
            return f"{case.rpc} as {caller}: wrong refusal: {error.code.name}: {error.detail}"
        return None
    return None if allowed(case, caller) else f"{case.rpc} as {caller}: allowed, should be denied"


@pytest.mark.parametrize("caller", CALLERS, ids=lambda c: "-".join(filter(None, c)))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.rpc)
def test_role_matrix(world: World, case: Case, caller: tuple[str, str]) -> None:
    assert check(world, case, caller) is None


@pytest.mark.postgres
def test_role_matrix_on_postgresql(postgres_url: str) -> None:
    world = world_on(postgres_url)
    try:
        problems = [problem for case in CASES for caller in CALLERS if (problem := check(world, case, caller))]
    finally:
        world.engine.dispose()
    assert problems == []


def test_every_rpc_is_in_the_matrix() -> None:
    covered = {case.rpc.split(":")[0] for case in CASES}
    for module in (tenancy_pb2, workers_pb2, tests_pb2, runs_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.name in ("TenancyService", "WorkerService", "TestService", "RunService"):
                assert {m.name for m in service.methods} <= covered, service.name


def test_a_role_on_one_organization_gives_nothing_on_another(world: World) -> None:
    with pytest.raises(CallmeterError) as error:
        world.call(("owner", "organization"), tests.list_tests,
                   tests_pb2.ListTestsRequest(project_id=world.other_project))
    assert error.value.code == ErrorCode.PERMISSION_DENIED
    with pytest.raises(CallmeterError):
        world.call(("owner", "organization"), tenancy.create_project,
                   tenancy_pb2.CreateProjectRequest(organization_id=world.other_organization, name="x"))


def test_a_worker_is_listed_to_whoever_may_view_its_token_scope(world: World) -> None:
    def names(caller: tuple[str, str]) -> list[str]:
        return [w.name for w in world.call(caller, workers.list_workers, workers_pb2.ListWorkersRequest()).workers]

    assert names(("viewer", "organization")) == ["organization-worker", "project-worker"]
    assert names(("viewer", "project")) == ["project-worker"]
    assert names(("none", "")) == []
