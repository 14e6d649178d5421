"""The two-phase start through a real registrar: callers of a registering group begin once it has
registered (callmeter/common/start_waves.py), in `callmeter worker --local` as on the platform.

Kamailio here takes 3 s to accept the callees' REGISTERs, as a loaded registrar does. Seen before
the change: callers started a fixed 1 s after their callees, INVITEd before the callees had
registered, and the registrar answered 404.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.worker.kamailio import PASSWORD, kamailio
from tests.worker.test_local import CALLMETER, json_lines, local_env, summaries

SPEC = """
name: waves
groups:
  - name: callees
    count: 4
    role: callee
    credential_ref: lab
    target: {{registrar: "127.0.0.1:{port}", number_start: 200}}
    codecs: [PCMU]
  - name: callers
    count: 4
    role: caller
    credential_ref: lab
    target: {{registrar: "127.0.0.1:{port}", proxy: "127.0.0.1:{port}", call_uri: "group:callees", number_start: 100}}
    codecs: [PCMU]
    scenario: {{call_duration: 2s}}
"""


def test_callers_wait_for_a_slow_registrar_to_register_their_callees(tmp_path: Path) -> None:
    with kamailio(tmp_path, children=8, slow_register=("2", 3.0)) as port:  # 4 held by slow REGISTERs
        spec = tmp_path / "waves.yaml"
        spec.write_text(SPEC.format(port=port))
        result = subprocess.run([CALLMETER, "worker", "--local", str(spec), "--summary-only"], cwd=tmp_path,
                                env=local_env() | {"CALLMETER_CREDENTIAL_LAB_USERNAME": "lab",
                                                    "CALLMETER_CREDENTIAL_LAB_PASSWORD": PASSWORD},
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    by_group = summaries(json_lines(result.stdout))
    assert by_group["callers"]["calls_connected"] == 4, by_group["callers"]
    assert by_group["callers"]["calls_failed"] == 0, by_group["callers"]
    assert by_group["callees"]["registered"] == 4, by_group["callees"]
