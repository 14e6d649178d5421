"""API request latency for reads (GetTest, ListTests, GetRun, ListRuns) under 50 concurrent
clients, on the embedded platform (`callmeter up` defaults: SQLite) and with the state on the
machine's PostgreSQL (a database made for the run and dropped after it), when it answers.

Peer measured in the same run: the standard gRPC health Check on the same API process under the
same concurrency — the floor of a Python grpc.aio service with no auth and no database. The machine
may be shared: each RPC is measured in ROUNDS slices taken in turn with the peer's, so that a
neighbour's burst falls on all of them alike, and the API process's CPU per request is printed
beside the rates as a second view of the cost (it too rises when the machine is busy).

Issue 12, 2 cores shared with other engineers' jobs, 50 clients; req/s (p99 ms), API CPU ms/request:
  before  SQLite  peer 3000-3350 (27-35)  GetTest 377-535 (161-197)  GetRun 365-457 (180-217)  2.5-2.9 ms
                                          ListRuns 261-361 (212-268)
          Postgr. peer 2500-3500 (25-40)  GetTest 251-348 (203-271)  GetRun 256-341 (204-268)  3.7-3.8 ms
  after   SQLite  peer 2970-3130 (34-40)  GetTest 900-1181 (83-115)  GetRun 881-1131 (83-113)  0.8-1.1 ms
          (Core reads, principals         ListRuns 425-578 (160-197)
          kept: PrincipalCache wired in services/api/servicers.py)
          Postgr. peer 2340-3150 (35-39)  GetTest 570-775 (144-167)  GetRun 564-733 (130-168)  1.4-1.7 ms
                                          ListRuns 337-387 (205-234)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from callmeter.cli.platform import Platform
from callmeter.common.channels import aio_channel
from callmeter.common.errors import ConfigError
from callmeter.common.stores.database import scratch_database
from callmeter.v1 import common_pb2, runs_pb2, runs_pb2_grpc, tests_pb2, tests_pb2_grpc

CLIENTS = 50
SECONDS = 5.0 if os.environ.get("CALLMETER_BENCH_QUICK") else 20.0
ROUNDS = 4  # each RPC's SECONDS, in this many slices taken in turn with the other RPCs'
TESTS = 20


@dataclass
class Figures:
    latencies: list[float] = field(default_factory=list)  # ms, every call
    seconds: float = 0.0
    api_cpu_s: float = 0.0  # the API process's user + system CPU while this RPC was measured


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(call: Callable[[], Awaitable[object]], seconds: float) -> list[float]:
    """CLIENTS tasks calling as fast as they can for ``seconds``; every latency in ms."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < deadline:
            began = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - began) * 1000)

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return latencies


def spec(n: int) -> tests_pb2.TestSpec:
    return tests_pb2.TestSpec(name=f"bench-{n}", groups=[
        tests_pb2.EndpointGroup(name="callees", count=2, role=common_pb2.ENDPOINT_ROLE_CALLEE, codecs=["PCMU"],
                                target=tests_pb2.SipTarget(aor="sip:{n}@127.0.0.1:5070")),
        tests_pb2.EndpointGroup(name="callers", count=2, role=common_pb2.ENDPOINT_ROLE_CALLER, codecs=["PCMU"],
                                target=tests_pb2.SipTarget(call_uri="group:callees"))])


async def measure(platform: Platform) -> dict[str, Figures]:
    metadata = [("authorization", f"Bearer {platform.owner_token}")]
    async with aio_channel(platform.api_address) as channel:
        tests = tests_pb2_grpc.TestServiceStub(channel)
        runs = runs_pb2_grpc.RunServiceStub(channel)
        created = [await tests.CreateTest(tests_pb2.CreateTestRequest(spec=spec(n)), metadata=metadata)
                   for n in range(TESTS)]
        # Runs fail at once without a worker (no capacity): real rows, as many as the tests.
        started = [await runs.StartRun(runs_pb2.StartRunRequest(test_id=t.id), metadata=metadata) for t in created]
        project = created[0].project_id
        health = health_pb2_grpc.HealthStub(channel)
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "health Check (peer)": lambda: health.Check(health_pb2.HealthCheckRequest()),
            "GetTest": lambda: tests.GetTest(tests_pb2.GetTestRequest(test_id=created[0].id), metadata=metadata),
            "ListTests": lambda: tests.ListTests(tests_pb2.ListTestsRequest(project_id=project), metadata=metadata),
            "GetRun": lambda: runs.GetRun(runs_pb2.GetRunRequest(run_id=started[0].id), metadata=metadata),
            "ListRuns": lambda: runs.ListRuns(runs_pb2.ListRunsRequest(project_id=project), metadata=metadata),
        }
        figures = {name: Figures() for name in calls}
        pid = platform.children["api"].process.pid
        for _ in range(ROUNDS):
            for name, call in calls.items():
                cpu, began = cpu_seconds(pid), time.monotonic()
                figures[name].latencies += await load(call, SECONDS / ROUNDS)
                figures[name].seconds += time.monotonic() - began
                figures[name].api_cpu_s += cpu_seconds(pid) - cpu
        return figures


#: The PostgreSQL server whose fresh database the second half uses (trust auth on this machine).
POSTGRES = os.environ.get("CALLMETER_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/")


def measure_on(database_url: str | None) -> dict[str, Figures]:
    with tempfile.TemporaryDirectory() as tmp:
        platform = Platform(Path(tmp), auto_ports=True, with_worker=False, log_level="warning",
                            database_url=database_url)
        platform.start()
        try:
            return asyncio.run(measure(platform))
        finally:
            platform.stop()


def report(store: str, results: dict[str, Figures]) -> None:
    print(f"API reads, {CLIENTS} concurrent clients, {SECONDS:.0f} s each in {ROUNDS} slices, {store}, "
          f"{TESTS} tests/runs")
    print(f"  {'rpc':<22}{'requests/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'of peer':>9}{'API CPU ms/req':>16}")
    peer = None
    for name, figures in results.items():
        rate = len(figures.latencies) / figures.seconds
        peer = peer or rate  # the first: the health Check
        print(f"  {name:<22}{rate:>11.0f}{statistics.median(figures.latencies):>9.1f}"
              f"{percentile(figures.latencies, 0.99):>9.1f}{rate / peer:>9.0%}"
              f"{1000 * figures.api_cpu_s / len(figures.latencies):>16.2f}")


def run() -> None:
    report("embedded store (SQLite)", measure_on(None))
    try:
        with scratch_database(POSTGRES, "cm_bench") as url:
            report("state on PostgreSQL (127.0.0.1)", measure_on(url))
    except ConfigError as exc:
        print(f"  (no PostgreSQL run: {exc})")
