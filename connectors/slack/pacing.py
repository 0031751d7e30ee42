"""Per-channel pacing and retry delays.

Slack allows about one message per second per channel and answers 429 with ``Retry-After``
when a client goes faster. ``ChannelPacer`` spaces the posts of each channel by a fixed
interval and, after a 429, holds that channel until the server's ``Retry-After`` has passed.
``backoff_delay`` is the exponential backoff with jitter used on 5xx and network errors.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable


class ChannelPacer:
    """Spaces posts per channel: at least ``interval`` seconds apart, later after a 429.

    One lane posts to one channel at a time, so a channel's slot is simply the earliest
    monotonic time its next post may start.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}

    def delay(self, channel: str) -> float:
        """Seconds until ``channel`` may post again (0 when it may post now)."""
        return max(0.0, self._next.get(channel, 0.0) - self._clock())

    async def acquire(self, channel: str) -> float:
        """Wait for ``channel``'s slot and take it; returns the seconds waited."""
        waited = 0.0
        # Loop: a 429 on this channel may push the slot further while we sleep.
        while (wait := self.delay(channel)) > 0:
            await asyncio.sleep(wait)
            waited += wait
        self._next[channel] = self._clock() + self.interval
        return waited

    def hold(self, channel: str, seconds: float) -> None:
        """No post to ``channel`` for ``seconds`` from now (a 429's ``Retry-After``)."""
        self._next[channel] = max(self._next.get(channel, 0.0), self._clock() + seconds)


def backoff_delay(
    attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random
) -> float:
    """Delay before retry number ``attempt`` (1-based): "equal jitter" exponential backoff.

    Half of ``min(cap, base * 2**(attempt-1))`` is fixed, half random, so retries of many
    messages spread out yet never come back immediately.
    """
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return ceiling / 2 + rng() * ceiling / 2


def parse_retry_after(value: str | None, default: float = 1.0) -> float:
    """Seconds from a ``Retry-After`` header (Slack sends whole seconds); ``default`` if absent."""
    if not value:
        return default
    try:
        seconds = float(value.strip())
    except ValueError:
        return default
    return seconds if seconds >= 0 else default
