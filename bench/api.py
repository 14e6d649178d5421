"""API request latency for reads (GetTest, ListTests, GetRun, ListRuns) under 50 concurrent
clients, on the embedded platform (`callmeter up` defaults: SQLite) and with the state on the
machine's PostgreSQL (a database made for the run and dropped after it), when it answers.

Peer measured in the same run: the standard gRPC health Check on the same API process under the
same concurrency — the floor of a Python grpc.aio service with no auth and no database.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from callmeter.cli.platform import Platform
from callmeter.common.channels import aio_channel
from callmeter.common.errors import ConfigError
from callmeter.common.stores.database import scratch_database
from callmeter.v1 import common_pb2, runs_pb2, runs_pb2_grpc, tests_pb2, tests_pb2_grpc

CLIENTS = 50
SECONDS = 5.0 if os.environ.get("CALLMETER_BENCH_QUICK") else 20.0
TESTS = 20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(call: Callable[[], Awaitable[object]]) -> list[float]:
    """CLIENTS tasks calling as fast as they can for SECONDS; every latency in ms."""
    latencies: list[float] = []
    deadline = time.monotonic() + SECONDS

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


async def measure(platform: Platform) -> dict[str, list[float]]:
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
        return {name: await load(call) for name, call in calls.items()}


#: The PostgreSQL server whose fresh database the second half uses (trust auth on this machine).
POSTGRES = os.environ.get("CALLMETER_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/")


def measure_on(database_url: str | None) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        platform = Platform(Path(tmp), auto_ports=True, with_worker=False, log_level="warning",
                            database_url=database_url)
        platform.start()
        try:
            return asyncio.run(measure(platform))
        finally:
            platform.stop()


def report(store: str, results: dict[str, list[float]]) -> None:
    print(f"API reads, {CLIENTS} concurrent clients, {SECONDS:.0f} s each, {store}, {TESTS} tests/runs")
    print(f"  {'rpc':<22}{'requests/s':>11}{'p50 ms':>9}{'p99 ms':>9}")
    for name, latencies in results.items():
        print(f"  {name:<22}{len(latencies) / SECONDS:>11.0f}{statistics.median(latencies):>9.1f}"
              f"{percentile(latencies, 0.99):>9.1f}")


def run() -> None:
    report("embedded store (SQLite)", measure_on(None))
    try:
        with scratch_database(POSTGRES, "cm_bench") as url:
            report("state on PostgreSQL (127.0.0.1)", measure_on(url))
    except ConfigError as exc:
        print(f"  (no PostgreSQL run: {exc})")
