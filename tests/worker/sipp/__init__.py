"""SIPp (Debian's sip-tester, 3.6.1) as a SIP peer on loopback for the engine tests.

The scenarios beside this file: `uas_403.xml`, `uas_404.xml`, `uas_486.xml`, `uas_503.xml` answer
every INVITE with that code; `uas_ring.xml` rings and never answers (CANCEL → 487);
`uac_pcma.xml` calls, plays Debian's PCMA recording for 3 s (raw socket: root) and hangs up.
SIPp's built-in `uas` with `-rtp_echo` answers 200 and sends our RTP back.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SIPP = shutil.which("sipp") or "/usr/bin/sipp"
PCAP = Path("/usr/share/sip-tester/g711a.pcap")


def require_sipp(pcap: bool = False) -> None:
    """Fails (not skips) without SIPp: `make test` installs it, so its absence is a broken install."""
    if not os.access(SIPP, os.X_OK):
        pytest.fail("sipp is not installed (Debian's sip-tester; make system-deps)")
    if pcap and (not PCAP.is_file() or os.geteuid() != 0):
        pytest.fail("play_pcap_audio needs Debian's g711a.pcap (make system-deps) and root (raw socket)")


def udp_bound(port: int) -> bool:
    """Whether some socket is bound to this UDP port on 127.0.0.1 or any address (/proc/net/udp)."""
    wanted = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    with open("/proc/net/udp") as table:
        return any(line.split()[1] in wanted for line in list(table)[1:])


def free_port_pair() -> int:
    """An even UDP port p with p, p+1, p+2, p+3 free (SIPp's RTP echo binds p and p+2)."""
    for _ in range(200):
        port = random.randrange(41000, 60000, 2)
        if not any(udp_bound(port + k) for k in range(4)):
            return port
    raise RuntimeError("no free UDP port pair")


class Sipp:
    """One SIPp process on 127.0.0.1; its logs (-trace_err) go to log_dir."""

    def __init__(self, scenario: str, log_dir: Path, *args: str, remote: str | None = None) -> None:
        self.sip_port = free_port_pair()
        self.media_port = free_port_pair()
        source = ["-sf", str(HERE / scenario)] if scenario.endswith(".xml") else ["-sn", scenario]
        command = [SIPP, *source, *([remote] if remote else []), "-i", "127.0.0.1", "-p", str(self.sip_port),
                   "-mi", "127.0.0.1", "-mp", str(self.media_port), "-nostdin", "-trace_err", *args]
        self.output = (log_dir / f"sipp-{scenario.replace('/', '_')}-{self.sip_port}.out").open("w+")
        self.proc = subprocess.Popen(command, cwd=log_dir, stdout=self.output, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def uri_host(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    def wait_listening(self, timeout: float = 5) -> Sipp:
        deadline = time.monotonic() + timeout
        while not udp_bound(self.sip_port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sipp did not start listening on {self.sip_port}:\n{self.log()}")
            time.sleep(0.05)
        return self

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            pytest.fail(f"sipp did not finish within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def log(self) -> str:
        self.output.flush()
        self.output.seek(0)
        return self.output.read()[-3000:]

    def counter(self, name: str) -> int:
        """A cumulative counter of SIPp's final statistics screen, e.g. "Successful call"."""
        for line in self.log().splitlines():
            if line.strip().startswith(name):
                return int(line.split("|")[2].split()[0])
        raise AssertionError(f"no {name!r} in sipp's output:\n{self.log()}")
