"""Make a worker process die with the gateway that started it (no orphaned model servers)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_PID_ENV = "MESHGATE_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGTERM us when the parent exits; exit now if it already has."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    # The parent may have died between fork and prctl: then we were re-parented already.
    if parent and parent.isdigit() and os.getppid() != int(parent):
        sys.exit(0)
