"""Which event loop a synctrail process runs on: uvloop by default, asyncio's own as fallback.

uvloop (libuv, written in C) takes the event loop's own work (sockets, callbacks, timers) out
of Python; what it saved each process, as measured with ``make bench``, is in the description
of its setting (``SYNCTRAIL_BRIDGE_EVENT_LOOP``, ``SYNCTRAIL_WORKER_EVENT_LOOP``). It has no
Windows build, so where it is not installed the process says so and runs on asyncio's loop.
"""

from __future__ import annotations

import asyncio
import logging
from types import ModuleType
from typing import Literal

log = logging.getLogger(__name__)

EventLoopName = Literal["uvloop", "asyncio"]


def uvloop_if_wanted(name: EventLoopName, setting: str) -> ModuleType | None:
    """The uvloop module when ``name`` asks for it and it is installed, else ``None``.

    ``setting`` is the variable that chose ``name``, for the warning when uvloop is missing.
    """
    if name != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        log.warning(
            "uvloop is not installed; using asyncio's event loop", extra={"setting": setting}
        )
        return None
    return uvloop


def loop_name(loop: asyncio.AbstractEventLoop) -> EventLoopName:
    """``"uvloop"`` or ``"asyncio"``: what ``loop`` is, for logs."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def running_loop_name() -> EventLoopName | None:
    """What the running loop is, or ``None`` when called outside one."""
    try:
        return loop_name(asyncio.get_running_loop())
    except RuntimeError:
        return None
