"""`callmeter up` from spawn to all-healthy, and resident memory per process.

Peers measured in the same run: the embedded nats-server alone, and a bare grpc.aio server with
only the health service (what any Python gRPC service costs before doing anything).
"""

from __future__ import annotations

import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from callmeter.cli.platform import rss_bytes
from callmeter.common.stores.nats import EmbeddedNats

ROUNDS = 3

BARE_GRPC = """
import asyncio, grpc
from grpc_health.v1 import health, health_pb2_grpc
async def main():
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


def time_up() -> tuple[float, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        began = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "callmeter.cli.main", "up", "--auto-ports", "--data-dir", tmp],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={"CALLMETER_PROFILE": str(Path(tmp) / "profile.json"), "PATH": "/usr/bin:/bin"})
        output = []
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if "Ctrl-C stops everything" in line:
                break
        elapsed = time.monotonic() - began
        memory = {name: int(mb) for name, mb in re.findall(r"^\s+(\S+)\s+\d+\s+\S+\s+(\d+) MB(?:\s+\S+)?$", "".join(output), re.M)}
        process.send_signal(signal.SIGINT)
        process.wait(60)
    return elapsed, memory


def time_nats() -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        began = time.monotonic()
        server = EmbeddedNats(Path(tmp))
        server.start()
        elapsed = time.monotonic() - began
        assert server.process is not None
        rss = rss_bytes(server.process.pid)
        server.stop()
    return elapsed, rss


def time_bare_grpc() -> tuple[float, int]:
    began = time.monotonic()
    process = subprocess.Popen([sys.executable, "-c", BARE_GRPC], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    process.stdout.readline()
    elapsed = time.monotonic() - began
    rss = rss_bytes(process.pid)
    process.terminate()
    process.wait()
    return elapsed, rss


def run() -> None:
    ups = [time_up() for _ in range(ROUNDS)]
    nats = [time_nats() for _ in range(ROUNDS)]
    grpcs = [time_bare_grpc() for _ in range(ROUNDS)]
    up_s = statistics.median(elapsed for elapsed, _ in ups)
    memory = ups[-1][1]
    print(f"callmeter up → all healthy (median of {ROUNDS}): {up_s:.2f} s")
    print(f"  peer: bare nats-server start {statistics.median(e for e, _ in nats):.3f} s, "
          f"bare grpc.aio+health process {statistics.median(e for e, _ in grpcs):.3f} s")
    print("resident memory after start (MB):")
    for name, mb in memory.items():
        print(f"  {name:<13}{mb:>6}")
    print(f"  peer: bare nats-server {nats[-1][1] / 2**20:.0f} MB, bare grpc.aio+health process {grpcs[-1][1] / 2**20:.0f} MB")
