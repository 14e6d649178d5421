"""`callmeter tests list|show|delete`, `runs show` with names and `runs cancel`, against the real
`callmeter api` and the real orchestrator on a state store holding the test world, whose two
workers stand at two sites (the organization's at site=a, the project's at site=b). No gateway holds them, so a run the orchestrator
places stays DISPATCHING: its assignments are retried only at the next tick, a minute away."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from callmeter.cli.main import main
from callmeter.common.stores.nats import EmbeddedNats
from callmeter.state.models import Worker
from callmeter.v1 import common_pb2, workers_pb2
from tests.api.conftest import world_on
from tests.api.world import World
from tests.procs import ROOT, ServiceProcess, create_metrics_streams, start_service
from tests.cli_commands import Result, environment

OWNER = ("owner", "organization")
EDITOR = ("editor", "project")
VIEWER = ("viewer", "project")
TWO_SITES = ROOT / "examples" / "two-sites.yaml"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, ServiceProcess]]:
    tmp = tmp_path_factory.mktemp("platform")
    url = f"sqlite:///{tmp / 'state.db'}"
    world = world_on(url)
    with Session(world.engine) as session, session.begin():
        # Sites the other way round from the workers' order by name, which placement without
        # the groups' selectors would follow.
        for worker_id, site in ((world.organization_worker, "a"), (world.project_worker, "b")):
            worker = session.get_one(Worker, worker_id)
            worker.labels = [{"key": "site", "value": site}]
            worker.capacity = workers_pb2.WorkerCapacity(
                max_endpoints=10, codecs=["PCMU/8000/1", "PCMA/8000/1"],
                transports=[common_pb2.TRANSPORT_UDP]).SerializeToString()
    nats = EmbeddedNats(tmp / "nats")
    nats.start()
    create_metrics_streams(nats.url)
    orchestrator = start_service("orchestrator", tmp, {
        "CALLMETER_DATABASE_URL": url, "CALLMETER_NATS_URL": nats.url, "CALLMETER_METRICS_ADDRESS": "127.0.0.1:1",
        "CALLMETER_TICK_INTERVAL_S": "60", "CALLMETER_STALE_AFTER_S": "3600"})
    api = start_service("api", tmp, {"CALLMETER_DATABASE_URL": url, "CALLMETER_METRICS_ADDRESS": "127.0.0.1:1",
                                     "CALLMETER_ORCHESTRATOR_ADDRESS": orchestrator.address})
    try:
        yield world, api
    finally:
        codes = [api.terminate(), orchestrator.terminate()]
        nats.stop()
        world.engine.dispose()
    assert codes == [0, 0], api.log()[-2000:] + orchestrator.log()[-2000:]


@pytest.fixture
def world(platform: tuple[World, ServiceProcess]) -> World:
    return platform[0]


@pytest.fixture
def cli(platform: tuple[World, ServiceProcess], capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> Callable[..., Result]:
    """``cli(who, *argv)``: `callmeter ARGV` in this process as a user of the world."""
    world, api = platform

    def run(who: tuple[str, str], *argv: str) -> Result:
        capsys.readouterr()
        with environment({"CALLMETER_API": api.address, "CALLMETER_TOKEN": world.tokens[who],
                          "CALLMETER_PROFILE": str(tmp_path / "none.json"), "CALLMETER_API_CA_FILE": ""}):
            try:
                code = main(list(argv))
            except SystemExit as stopped:  # argparse: usage and one error line
                code = int(stopped.code or 0)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def renamed(tmp_path: Path, name: str) -> Path:
    """examples/two-sites.yaml as a test of another name."""
    file = tmp_path / f"{name}.yaml"
    file.write_text(TWO_SITES.read_text().replace("name: two-sites", f"name: {name}"))
    return file


def error_line(result: Result) -> str:
    """The one line of a command that failed with exit 2 and printed nothing on stdout."""
    assert (result.code, result.out) == (2, ""), result
    [line] = result.err.splitlines()
    assert line.startswith("callmeter: error: "), line
    return line.removeprefix("callmeter: error: ")


def test_list_and_show_and_the_yaml_applies_again_unchanged(cli: Callable[..., Result], world: World,
                                                             tmp_path: Path) -> None:
    applied = cli(EDITOR, "tests", "apply", str(renamed(tmp_path, "sites-shown")))
    assert applied.code == 0 and "'sites-shown' created" in applied.out, applied

    listed = cli(VIEWER, "tests", "list")
    assert listed.code == 0, listed
    heading, *rows = listed.out.splitlines()
    assert heading.split() == ["name", "version", "groups", "endpoints", "last", "run", "updated", "(UTC)", "id"]
    cells = {row.split()[0]: row.split() for row in rows}
    assert cells["sites-shown"][1:5] == ["1", "2", "20", "-"], "no run yet"
    assert cells["smoke"][1:5] == ["1", "2", "4", "queued"], "the world's run, never submitted"
    assert cli(VIEWER, "test", "list").out == listed.out, "`test` is `tests`"
    [shown] = [test for test in json.loads(cli(VIEWER, "tests", "list", "--json").out)
               if test["spec"]["name"] == "sites-shown"]
    assert shown["last_run"] is None
    assert shown["spec"]["groups"][0]["worker_selector"] == [{"key": "site", "value": "b"}]
    assert shown["spec"]["groups"][0]["role"] == "callee", "enum words"

    as_yaml = cli(VIEWER, "tests", "show", "sites-shown", "--yaml")
    assert as_yaml.code == 0 and as_yaml.err == "", as_yaml
    edited = tmp_path / "edited.yaml"
    edited.write_text(as_yaml.out)
    again = cli(EDITOR, "tests", "apply", str(edited))
    assert again.code == 0 and "'sites-shown' unchanged" in again.out and "version 1" in again.out, again

    edited.write_text(as_yaml.out.replace("call_duration: 30s", "call_duration: 45s"))
    assert "'sites-shown' updated" in cli(EDITOR, "tests", "apply", str(edited)).out
    by_id = cli(VIEWER, "tests", "show", shown["id"])
    assert by_id.code == 0, by_id
    header = by_id.out.split("\n\n")[0].splitlines()
    assert header[0] == f"test 'sites-shown': id {shown['id']}, project {world.project}"
    assert header[1].startswith("version 2 of 2; created ") and header[2] == "2 groups, 20 endpoints"
    assert by_id.out.split("\n\n", 1)[1] == as_yaml.out.replace("30s", "45s")
    first = json.loads(cli(VIEWER, "tests", "show", "sites-shown", "--version", "1", "--json").out)
    assert first["version"] == 1 and first["spec"]["groups"][1]["scenario"]["call_duration"] == "30s"

    assert "not_found" in error_line(cli(VIEWER, "tests", "show", "sites-shown", "--version", "3"))
    assert error_line(cli(VIEWER, "tests", "show", "nowhere")) == "no test 'nowhere' (by name or id)"


def test_a_two_site_run_shows_its_names_and_is_cancelled(cli: Callable[..., Result], world: World,
                                                         tmp_path: Path) -> None:
    started = cli(OWNER, "run", str(renamed(tmp_path, "sites-run")), "--json")
    assert started.code == 0, started
    run = json.loads(started.out)
    assert (run["state"], run["reasons"]) == ("dispatching", []), run

    shown = cli(OWNER, "runs", "show", run["run_id"])
    assert shown.code == 0, shown
    lines = shown.out.splitlines()
    assert lines[0] == "test sites-run version 1, started by owner-org, 0 s of execution"
    assert lines[1:3] == ["placed    callees: 0-9 on project-worker",
                          "          callers: 0-9 on organization-worker"], "each group at its own site"
    data = json.loads(cli(OWNER, "runs", "show", run["run_id"], "--json").out)
    assert (data["test"], data["test_version"], data["started_by"]) == ("sites-run", 1, "owner-org")
    assert data["placements"] == [
        {"group": "callees", "first_index": 0, "count": 10, "worker": "project-worker", "worker_id": world.project_worker},
        {"group": "callers", "first_index": 0, "count": 10, "worker": "organization-worker",
         "worker_id": world.organization_worker}]
    assert cli(VIEWER, "runs", "show", run["run_id"]).out.splitlines()[0].endswith(
        f"started by {data['started_by_id']}, 0 s of execution"), "a user the viewer may not see: the id"

    assert "permission_denied" in error_line(cli(VIEWER, "runs", "cancel", run["run_id"]))
    cancelled = cli(OWNER, "runs", "cancel", run["run_id"])
    assert (cancelled.code, cancelled.out) == (0, f"run {run['run_id']} cancelled\n"), cancelled
    again = cli(OWNER, "runs", "cancel", run["run_id"], "--json")
    assert (json.loads(again.out)["state"], json.loads(again.out)["verdict"]) == ("cancelled", "error")
    assert cli(OWNER, "runs", "cancel", run["run_id"]).out == \
        f"run {run['run_id']} had already ended: cancelled, verdict ERROR\n"
    assert f"run {run['run_id']}: cancelled, verdict ERROR" in cli(VIEWER, "runs", "show", run["run_id"]).out
    listed = cli(VIEWER, "tests", "list").out.splitlines()
    assert next(line for line in listed if line.startswith("sites-run ")).split()[4] == "error"


def test_a_group_no_worker_matches_fails_the_run_naming_it_and_its_labels(cli: Callable[..., Result],
                                                                          tmp_path: Path) -> None:
    file = renamed(tmp_path, "sites-nowhere")
    file.write_text(file.read_text().replace("value: b}", "value: c}"))
    started = cli(OWNER, "run", str(file), "--json")
    assert started.code == 0, started
    run = json.loads(started.out)
    assert (run["state"], run["verdict"]) == ("failed", "error")
    [reason] = run["reasons"]
    assert reason.startswith("not enough capacity: group 'callees': 10 of 10 endpoints found no worker with free "
                             "capacity and labels site=c (2 online; "), reason
    assert "group 'callers'" not in reason


def test_delete_destroys_a_test_without_runs_and_archives_one_with_runs(cli: Callable[..., Result],
                                                                        tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli(EDITOR, "tests", "apply", str(renamed(tmp_path, "sites-gone"))).code == 0
    assert "permission_denied" in error_line(cli(VIEWER, "tests", "delete", "sites-gone", "--yes"))
    assert error_line(cli(EDITOR, "tests", "delete", "sites-gone")) == \
        "deleting test 'sites-gone' needs --yes (there is no terminal to ask)"

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    declined = cli(EDITOR, "tests", "delete", "sites-gone")
    assert error_line(Result(declined.code, declined.out, declined.err.split("[y/N] ")[1])) == \
        "test 'sites-gone' not deleted"
    monkeypatch.setattr("sys.stdin", Terminal("y\n"))
    deleted = cli(EDITOR, "tests", "delete", "sites-gone")
    assert deleted.code == 0 and deleted.out.startswith("test 'sites-gone' deleted: "), deleted
    assert error_line(cli(VIEWER, "tests", "show", "sites-gone")) == "no test 'sites-gone' (by name or id)"

    file = renamed(tmp_path, "sites-kept")
    run = json.loads(cli(OWNER, "run", str(file), "--json").out)
    assert cli(OWNER, "runs", "cancel", run["run_id"]).code == 0
    archived = cli(EDITOR, "tests", "delete", "sites-kept", "--yes")
    assert archived.out == "test 'sites-kept' archived: it has runs, which are kept; `callmeter tests apply` " \
                           "brings it back\n", archived
    assert "sites-kept" not in cli(VIEWER, "tests", "list").out
    [row] = [line for line in cli(VIEWER, "tests", "list", "--archived").out.splitlines() if "sites-kept" in line]
    assert row.startswith("sites-kept (archived) ")
    assert "'sites-kept' updated" in cli(EDITOR, "tests", "apply", str(file)).out
    assert "sites-kept " in cli(VIEWER, "tests", "list").out
