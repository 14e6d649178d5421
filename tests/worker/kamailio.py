"""Kamailio on loopback as a registrar and proxy with digest auth, for engine and local-mode tests.

Installed by `make system-deps` (which `make test` runs): a missing one fails, it is not skipped.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
PASSWORD = "secret"

CONFIG = """#!KAMAILIO
log_stderror=yes
fork=yes
children={children}
tcp_children={children}
auto_aliases=no
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "auth.so"
loadmodule "cfgutils.so"
loadmodule "htable.so"
modparam("usrloc", "db_mode", 0)
modparam("htable", "htable", "passwords=>size=8;")
{passwords}request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here"); exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (is_method("REGISTER")) {{
        $var(password) = "{password}";
        if ($sht(passwords=>$au) != $null) {{ $var(password) = $sht(passwords=>$au); }}
        if (!pv_www_authenticate("$td", "$var(password)", "0")) {{ www_challenge("$td", "0"); exit; }}
        {slow_register}save("location");
        exit;
    }}
    if (is_method("INVITE")) {{ record_route(); }}
    if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
    t_relay();
}}
"""


@contextmanager
def kamailio(tmp_path: Path, children: int = 1, slow_register: tuple[str, float] | None = None,
             passwords: dict[str, str] | None = None) -> Iterator[int]:
    """A running Kamailio; yields its port (UDP and TCP). ``slow_register`` = (user prefix,
    seconds): the registrar takes that long to accept the REGISTERs of those users, as a loaded
    one does. ``passwords``: user → password for digest auth; any other user has PASSWORD."""
    if not os.path.exists(KAMAILIO) or not os.path.isdir(MODULES):
        pytest.fail("kamailio is not installed (make system-deps)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    slow = ""
    if slow_register is not None:
        prefix, seconds = slow_register
        slow = f'if ($tU =~ "^{prefix}") {{ usleep("{round(seconds * 1e6)}"); }}\n        '
    entries = ""
    if passwords:
        if not all(re.fullmatch(r"[\w-]+", user + password) for user, password in passwords.items()):
            raise ValueError("users and passwords for kamailio() are letters, digits, '_' and '-'")
        entries = "".join(f'    $sht(passwords=>{user}) = "{password}";\n' for user, password in passwords.items())
        entries = f"event_route[htable:mod-init] {{\n{entries}}}\n"
    config = tmp_path / "kamailio.cfg"
    config.write_text(CONFIG.format(port=port, modules=MODULES, password=PASSWORD, children=children,
                                    slow_register=slow, passwords=entries))
    log = tmp_path / "kamailio.log"
    proc = subprocess.Popen([KAMAILIO, "-f", str(config), "-DD", "-E", "-P", str(tmp_path / "kamailio.pid")],
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"), start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        else:
            pytest.fail("kamailio did not start:\n" + log.read_text()[-2000:])
        yield port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
