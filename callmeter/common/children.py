"""Child processes that never outlive the process that started them.

Popen(orphan_proof(argv), process_group=0): the child runs through this module, which asks the
kernel for SIGTERM when its parent dies (Linux PR_SET_PDEATHSIG), then execs ``argv`` — same pid.
A launcher rather than ``preexec_fn``: a Python callback between fork and exec makes subprocess
fork() instead of vfork(), which runs gRPC's fork handlers in the child, and those abort it when
the parent has gRPC threads busy (grpc/grpc#13998). Its own process group keeps a terminal's
Ctrl-C to the parent, which stops its children in order.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def orphan_proof(argv: list[str]) -> list[str]:
    """``argv`` behind the launcher: the child gets SIGTERM when this process dies."""
    return [sys.executable, "-m", "callmeter.common.children", str(os.getpid()), *argv]


def _launch(parent: int, argv: list[str]) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: children may outlive a killed parent
        pass
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(1)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    _launch(int(sys.argv[1]), sys.argv[2:])
