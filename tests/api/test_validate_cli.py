"""`callmeter test validate` with a platform configured: the real `callmeter api` checks the file
against what its workers can do; without an answer, the file is checked here and that is said."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from callmeter.state.models import Worker
from callmeter.v1 import common_pb2, workers_pb2
from tests.api.conftest import api_alone
from tests.api.world import World
from tests.bad_specs import REFUSED, BadFile, assert_one_line, problem_lines
from tests.procs import ServiceProcess, run_callmeter

VIEWER = ("viewer", "project")
# A worker of the project has opus, which callmeter's own engine lacks.
OPUS = BadFile("opus", "groups[1].codecs", ["opus", "PCMU"], "groups[1].codecs[0]", ('"opus"',))


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, ServiceProcess]]:
    def prepare(world: World) -> None:
        with Session(world.engine) as session, session.begin():
            session.get_one(Worker, world.project_worker).capacity = workers_pb2.WorkerCapacity(
                max_endpoints=10, codecs=["PCMU", "opus"], transports=[common_pb2.TRANSPORT_UDP],
                srtp_keyings=[common_pb2.SRTP_KEYING_SDES]).SerializeToString()

    with api_alone(tmp_path_factory.mktemp("api"), prepare) as started:
        yield started


def platform_env(tmp_path: Path, address: str, token: str) -> dict[str, str]:
    return {"CALLMETER_API": address, "CALLMETER_TOKEN": token, "CALLMETER_PROFILE": str(tmp_path / "none.json")}


def test_the_api_says_what_its_workers_can_do(api: tuple[World, ServiceProcess], tmp_path: Path) -> None:
    world, service = api
    file = OPUS.write(tmp_path)
    here = run_callmeter("test", "validate", str(file), env={"CALLMETER_PROFILE": str(tmp_path / "none.json")})
    assert here.returncode == 2
    assert_one_line(OPUS, file, problem_lines(here.stderr, file))
    assert "in callmeter's SIP engine" in here.stderr

    asked = run_callmeter("test", "validate", str(file), env=platform_env(tmp_path, service.address,
                                                                          world.tokens[VIEWER]))
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout == (f"{file}: valid: test 'table', 2 groups, 4 endpoints "
                            f"(checked against the workers of {service.address})\n")


@pytest.mark.parametrize("bad", [bad for bad in REFUSED if bad.id in (
    "count-million", "gate-metric-unknown", "call-uri-no-group", "srtp-keying-dtls")], ids=lambda bad: bad.id)
def test_a_bad_file_is_refused_by_the_api_on_one_line(bad: BadFile, api: tuple[World, ServiceProcess],
                                                      tmp_path: Path) -> None:
    world, service = api
    file = bad.write(tmp_path)
    result = run_callmeter("test", "validate", str(file), env=platform_env(tmp_path, service.address,
                                                                           world.tokens[VIEWER]))
    assert result.returncode == 2 and result.stdout == ""
    assert problem_lines(result.stderr, file) == result.stderr.splitlines()
    assert_one_line(bad, file, problem_lines(result.stderr, file))


def test_a_token_the_api_refuses_is_one_error_line(api: tuple[World, ServiceProcess], tmp_path: Path) -> None:
    _, service = api
    result = run_callmeter("test", "validate", str(OPUS.write(tmp_path)),
                           env=platform_env(tmp_path, service.address, "cm_api_not-a-token"))
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("callmeter: error: unauthenticated: "), line


def test_an_api_that_does_not_answer_leaves_the_check_here_and_says_so(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    file = OPUS.write(tmp_path)
    result = run_callmeter("test", "validate", str(file), env=platform_env(tmp_path, address, "cm_api_x"))
    assert result.returncode == 2
    warning, problem = result.stderr.splitlines()
    assert warning.startswith(f"callmeter: warning: the API at {address} did not answer (unavailable: "), warning
    assert_one_line(OPUS, file, [problem])
