"""Child processes that never outlive the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for Popen: SIGTERM when the parent dies, and a process group of its own so
    that a terminal's Ctrl-C reaches only the parent, which stops its children in order."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: children may outlive a killed parent
        pass
    os.setpgrp()
