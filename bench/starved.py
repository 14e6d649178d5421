"""Calls through a registrar with the generator starved of CPU: `python -m bench starved`.

25 callers call 25 callees registered with Kamailio (digest auth) on loopback, in
`callmeter worker --local`, first on the quiet machine (the peer figure), then starved: two
busy processes per core at normal priority and the worker at nice 10. For each it prints the
callees registered, the calls connected, the callers' setup p50/p95, the seconds the generator
said it was overloaded, and how long the run took. Before the two-phase start and the callers'
wait for their callees (issue 11, item 6) 6-8 of 25 calls connected under such load.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.worker.kamailio import PASSWORD, kamailio

PAIRS = 25
SPEC = """
name: starved
groups:
  - name: callees
    count: {pairs}
    role: callee
    credential_ref: lab
    target: {{registrar: "127.0.0.1:{port}", number_start: 2000}}
    codecs: [PCMU]
  - name: callers
    count: {pairs}
    role: caller
    credential_ref: lab
    target: {{registrar: "127.0.0.1:{port}", proxy: "127.0.0.1:{port}", call_uri: "group:callees", number_start: 1000}}
    codecs: [PCMU]
    scenario: {{call_duration: 5s}}
timeout: 300s
"""


def _local_run(workdir: Path, port: int, starve: bool) -> dict[str, dict]:  # type: ignore[type-arg]
    spec = workdir / "starved.yaml"
    spec.write_text(SPEC.format(pairs=PAIRS, port=port))
    rtp_min = random.randrange(20000, 40000, 2)
    env = {**os.environ, "CALLMETER_CREDENTIAL_LAB_USERNAME": "lab", "CALLMETER_CREDENTIAL_LAB_PASSWORD": PASSWORD,
           "CALLMETER_RTP_PORT_MIN": str(rtp_min), "CALLMETER_RTP_PORT_MAX": str(rtp_min + 1999),
           "CALLMETER_LOG_LEVEL": "warning"}
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * (os.cpu_count() or 1))
               ] if starve else []
    try:
        began = time.monotonic()
        result = subprocess.run([sys.executable, "-m", "callmeter.cli.main", "worker", "--local", str(spec),
                                 "--summary-only"], env=env, capture_output=True, text=True, timeout=600,
                                preexec_fn=(lambda: os.nice(10)) if starve else None)
        took = time.monotonic() - began
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    by_group = {line["group"]: line for line in lines if line.get("type") == "summary"}
    if "" not in by_group:
        raise SystemExit(f"the local run printed no summary (exit {result.returncode}):\n{result.stderr[-3000:]}")
    by_group[""]["took_s"] = took
    return by_group


def _line(label: str, by_group: dict[str, dict]) -> str:  # type: ignore[type-arg]
    callers, callees, run = by_group["callers"], by_group["callees"], by_group[""]
    return (f"  {label:<8} registered {callees['registered']:>2}/{PAIRS}  connected {callers['calls_connected']:>2}/{PAIRS}"
            f"  setup p50 {callers['setup_ms_p50'] or 0:7.0f} ms  p95 {callers['setup_ms_p95'] or 0:7.0f} ms"
            f"  overloaded {run.get('overloaded_s') or 0:>3} s  verdict {run['verdict']}  took {run['took_s']:.0f} s")


def run() -> None:
    print(f"{PAIRS} callers -> {PAIRS} callees registered with Kamailio (digest), PCMU calls of 5 s, "
          "callmeter worker --local; starved: 2 busy processes per core, the worker at nice 10")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with kamailio(workdir, children=8) as port:
            print(_line("quiet", _local_run(workdir, port, starve=False)), flush=True)
            print(_line("starved", _local_run(workdir, port, starve=True)), flush=True)
