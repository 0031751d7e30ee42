"""Doing a Kafka step again until the broker answers: tenacity, set up once for synctrail.

A synctrail process may start before Kafka does and outlives its restarts. A step that needs the
broker (start a client, create the topics, read a state topic, write a record that must be
durable) is done again after a failure for as long as it takes: forever unless the process
stops, with exponential backoff (``wait_initial``, doubling, at most ``wait_max``) plus a random
part of up to ``wait_initial`` so that processes that lost the broker together do not come back
in step. Each retry is logged once, as a warning naming the step and the error; any other
exception ends the step at once.

tenacity rather than stamina (its opinionated wrapper): the log line is made per call here, not
by a process-wide hook; the wait can end early when the process stops (tenacity takes the
sleep function); and these loops are meant to be unbounded, where stamina's test mode would
bound them. Tests shorten the waits with ``wait_initial`` and ``wait_max``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import tenacity
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What an unreachable or restarting broker raises: aiokafka's errors and the socket's.
KAFKA_UNREACHABLE: tuple[type[BaseException], ...] = (KafkaError, OSError)


class Stopped(Exception):
    """The process is stopping: the step was given up before it succeeded."""


async def until_kafka_answers(
    step: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[BaseException], ...] = KAFKA_UNREACHABLE,
    message: str = "kafka not reachable, retrying",
    extra: Mapping[str, object] | None = None,
    wait_initial: float = 0.5,
    wait_max: float = 5.0,
    stop: asyncio.Event | None = None,
    logger: logging.Logger = log,
) -> T:
    """``await step()`` until it does not raise one of ``retry_on``, and return its result.

    Each retry logs ``message`` at warning on ``logger``, with ``extra``, the error and the
    wait (``retry_in_s``). With ``stop``: raises :class:`Stopped` instead of trying (again)
    once ``stop`` is set, ending a wait at once.
    """
    fields = dict(extra or {})

    def log_retry(state: tenacity.RetryCallState) -> None:
        if stop is not None and stop.is_set():
            return
        error = state.outcome.exception() if state.outcome else None
        wait = round(state.upcoming_sleep, 2)
        logger.warning(message, extra={**fields, "error": repr(error), "retry_in_s": wait})

    async def sleep(seconds: float) -> None:
        if stop is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        if stop.is_set():
            raise Stopped

    if stop is not None and stop.is_set():
        raise Stopped
    retrying = tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type(retry_on),
        wait=tenacity.wait_exponential(multiplier=wait_initial, max=wait_max)
        + tenacity.wait_random(0, wait_initial),
        stop=tenacity.stop_never,
        sleep=sleep,
        before_sleep=log_retry,
        reraise=True,
    )

    async def attempt() -> T:  # tenacity awaits only what a coroutine function returns
        return await step()

    result: T = await retrying(attempt)
    return result
