"""The bridge's Kafka producer in a child process, so that producing runs on a second core.

Producing costs the bridge about a third of its CPU per request (aiokafka's batching, protocol
encoding and the produce round trips; bench.bridge). With ``SYNCTRAIL_BRIDGE_PRODUCER=process``
(the default) a :class:`ProducerProcess` in the bridge forwards each record over a Unix socket
pair to a child process running a :class:`~connectors.bridge.producer.LocalProducer`, and
resolves the record's future when the child relays the broker's acknowledgement. The bridge
still answers 202 only after that acknowledgement, and the spool, per-app order and every
decision about them stay in the bridge process: the child only produces.

Frames, both ways: a header ``<BQI`` (kind, id, payload length) and the payload.

* bridge → child: ``SUBMIT`` (u16 topic length, topic, u16 key length, key, value),
  ``CONNECT``, ``TOPIC_EXISTS``, ``RETIRE`` (reason), ``CLOSE``;
* child → bridge: ``ACK`` (``<iq`` partition, offset), ``FAIL`` (reason), ``REPLY`` (JSON
  ``{"ok": ..., "value": ..., "error": ...}`` for a control frame of the same id).

Failure: when the child exits (or is killed), every record it had not acknowledged fails at
once, so the Dispatcher spools it and marks the broker down; its next reconnect starts a new
child. The child ignores SIGINT and SIGTERM (the bridge stops it with ``CLOSE`` after a
graceful drain, and Ctrl-C reaches the whole process group), exits when the socket closes,
and gets SIGKILL if the bridge dies (parent-death signal), so no child outlives its bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import logging
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import orjson

from connectors import logs
from connectors.bridge.batcher import BatchFailed
from connectors.bridge.producer import LocalProducer, ProducerConfig, ProducerUnavailable
from connectors.broker import die_with_parent
from streams.event_loop import EventLoopName, uvloop_if_wanted

log = logging.getLogger(__name__)

SUBMIT, CONNECT, TOPIC_EXISTS, RETIRE, CLOSE = 1, 2, 3, 4, 5
ACK, FAIL, REPLY = 11, 12, 13

HEADER = struct.Struct("<BQI")
_U16 = struct.Struct("<H")
_ACK = struct.Struct("<iq")

Frame = tuple[int, int, bytes]


class FrameReader:
    """Splits a byte stream into ``(kind, id, payload)`` frames, whatever the chunking."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data``; return the frames it completed, in order."""
        buf = self._buf
        buf += data
        frames: list[Frame] = []
        pos, size, head = 0, len(buf), HEADER.size
        while size - pos >= head:
            kind, ident, length = HEADER.unpack_from(buf, pos)
            end = pos + head + length
            if end > size:
                break
            frames.append((kind, ident, bytes(buf[pos + head : end])))
            pos = end
        if pos:
            del buf[:pos]
        return frames


def frame(kind: int, ident: int, payload: bytes = b"") -> bytes:
    """One frame as bytes."""
    return HEADER.pack(kind, ident, len(payload)) + payload


def submit_head(ident: int, topic: bytes, key: bytes, value_length: int) -> bytes:
    """A SUBMIT frame up to its value (the value is written after it as it is, uncopied)."""
    length = 4 + len(topic) + len(key) + value_length
    return b"".join(
        (HEADER.pack(SUBMIT, ident, length), _U16.pack(len(topic)), topic, _U16.pack(len(key)), key)
    )


def parse_submit(payload: bytes) -> tuple[str, bytes, bytes]:
    """``(topic, key, value)`` of a SUBMIT payload."""
    (topic_length,) = _U16.unpack_from(payload, 0)
    key_at = 2 + topic_length
    (key_length,) = _U16.unpack_from(payload, key_at)
    value_at = key_at + 2 + key_length
    return payload[2:key_at].decode(), payload[key_at + 2 : value_at], payload[value_at:]


class _Writer:
    """Frames written in one ``writelines`` per event-loop iteration (one system call)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._out: list[bytes] = []
        self._scheduled = False
        self.transport: asyncio.Transport | None = None

    def write(self, *pieces: bytes) -> None:
        self._out.extend(pieces)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)


class _Link(asyncio.Protocol):
    """One end of the socket pair: frames in go to ``on_frame``, a closed socket to
    ``on_lost``."""

    def __init__(
        self,
        writer: _Writer,
        on_frame: Callable[[int, int, bytes], None],
        on_lost: Callable[[Exception | None], None],
    ) -> None:
        self._reader = FrameReader()
        self._writer = writer
        self._on_frame = on_frame
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, but have its methods.
        self._writer.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        on_frame = self._on_frame
        for kind, ident, payload in self._reader.feed(data):
            on_frame(kind, ident, payload)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._writer.transport = None
        self._on_lost(exc)


# ---------------------------------------------------------------------- the bridge's side


class ProducerProcess:
    """The :class:`~connectors.bridge.producer.Producer` interface, served by a child process.

    Create it in the running loop; the child starts on the first :meth:`connect` and again on
    a later one if it died.
    """

    def __init__(
        self, config: ProducerConfig, *, event_loop: EventLoopName, log_level: str, log_format: str
    ) -> None:
        self.config = config
        self._child_args = orjson.dumps(
            {
                "config": dataclasses.asdict(config),
                "event_loop": event_loop,
                "log_level": log_level,
                "log_format": log_format,
            }
        ).decode()
        self._loop = asyncio.get_running_loop()
        self._writer = _Writer(self._loop)
        self._process: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future[tuple[int, int]]] = {}
        self._started: deque[tuple[int, float]] = deque()
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._topics: dict[str, bytes] = {}
        self._closing = False

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._process.pid if self._process is not None and self.alive else None

    @property
    def alive(self) -> bool:
        """Whether the child is connected."""
        return self._writer.transport is not None

    # -------------------------------------------------------------- records

    def submit(self, topic: str, key: bytes, value: bytes) -> asyncio.Future[tuple[int, int]]:
        """Queue a record; see :meth:`connectors.bridge.producer.Producer.submit`."""
        fut: asyncio.Future[tuple[int, int]] = self._loop.create_future()
        if self._writer.transport is None:
            fut.set_exception(BatchFailed("producer process not running"))
            return fut
        ident = self._next_id
        self._next_id += 1
        self._pending[ident] = fut
        self._started.append((ident, time.monotonic()))
        topic_bytes = self._topics.get(topic)
        if topic_bytes is None:
            topic_bytes = self._topics[topic] = topic.encode()
        self._writer.write(submit_head(ident, topic_bytes, key, len(value)), value)
        return fut

    def oldest_unacknowledged(self) -> float | None:
        """See :meth:`connectors.bridge.producer.Producer.oldest_unacknowledged`."""
        started, pending = self._started, self._pending
        while started and started[0][0] not in pending:
            started.popleft()
        return started[0][1] if started else None

    def _on_frame(self, kind: int, ident: int, payload: bytes) -> None:
        if kind == ACK:
            fut = self._pending.pop(ident, None)
            if fut is not None and not fut.done():
                fut.set_result(_ACK.unpack(payload))
        elif kind == FAIL:
            fut = self._pending.pop(ident, None)
            if fut is not None and not fut.done():
                fut.set_exception(BatchFailed(payload.decode()))
        elif kind == REPLY:
            call = self._calls.pop(ident, None)
            if call is not None and not call.done():
                call.set_result(orjson.loads(payload))

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        self._started.clear()
        failure = BatchFailed(reason)
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(failure)

    def _on_lost(self, exc: Exception | None) -> None:
        code = self._process.returncode if self._process is not None else None
        reason = (
            f"producer process exited (status {code})"
            if code is not None
            else ("producer process closed its socket")
        )
        if not self._closing:
            log.warning("producer process lost", extra={"reason": reason})
        self._fail_pending(reason)
        calls, self._calls = self._calls, {}
        for call in calls.values():
            if not call.done():
                call.set_exception(ProducerUnavailable(reason))

    # -------------------------------------------------------------- control

    async def _spawn(self) -> None:
        await self._reap()
        ours, theirs = socket.socketpair()
        try:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "connectors.bridge.producer_process",
                "--fd",
                str(theirs.fileno()),
                "--args",
                self._child_args,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        except OSError as exc:
            ours.close()
            raise ProducerUnavailable(f"cannot start the producer process: {exc}") from None
        finally:
            theirs.close()
        await self._loop.create_unix_connection(
            lambda: _Link(self._writer, self._on_frame, self._on_lost), sock=ours
        )
        log.info("producer process started", extra={"pid": self._process.pid})

    async def _call(self, kind: int, payload: bytes, timeout: float) -> Any:
        if self._writer.transport is None:
            raise ProducerUnavailable("producer process not running")
        ident = self._next_id
        self._next_id += 1
        call: asyncio.Future[Any] = self._loop.create_future()
        self._calls[ident] = call
        self._writer.write(frame(kind, ident, payload))
        try:
            reply = await asyncio.wait_for(call, timeout)
        except TimeoutError:
            raise ProducerUnavailable(f"producer process did not answer in {timeout:g}s") from None
        finally:
            self._calls.pop(ident, None)
        if not reply["ok"]:
            raise ProducerUnavailable(reply["error"])
        return reply.get("value")

    async def connect(self) -> None:
        """Start the child if it is not running, then have it connect a fresh producer."""
        if self._writer.transport is None:
            await self._spawn()
        # The child's own connect is bounded by a few produce timeouts; its start by imports.
        await self._call(CONNECT, b"", 5 * max(self.config.produce_timeout_s, 1.0) + 10)

    async def topic_exists(self) -> bool:
        """See :meth:`connectors.bridge.producer.Producer.topic_exists`."""
        return bool(await self._call(TOPIC_EXISTS, b"", self.config.produce_timeout_s + 1))

    def retire(self, reason: str) -> None:
        """Fail what is pending here at once; the child abandons its producer."""
        self._fail_pending(reason)
        if self._writer.transport is not None:
            self._writer.write(frame(RETIRE, 0, reason.encode()))

    async def close(self) -> None:
        """Have the child hand over and await what it holds, then let it exit."""
        self._closing = True
        if self._writer.transport is not None:
            with contextlib.suppress(ProducerUnavailable):
                await self._call(CLOSE, b"", 2 * self.config.produce_timeout_s + 3)
        self._fail_pending("producer closed")
        transport = self._writer.transport
        if transport is not None:
            transport.close()
        await self._reap()

    async def _reap(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()


# ---------------------------------------------------------------------- the child's side


class _Child:
    """Serves one bridge: records to the local producer, acknowledgements back."""

    def __init__(self, producer: LocalProducer, writer: _Writer, done: asyncio.Future[None]):
        self.producer = producer
        self.writer = writer
        self.done = done
        self._tasks: set[asyncio.Task[None]] = set()

    def on_frame(self, kind: int, ident: int, payload: bytes) -> None:
        if kind == SUBMIT:
            topic, key, value = parse_submit(payload)
            fut = self.producer.submit(topic, key, value)
            fut.add_done_callback(functools.partial(self._settled, ident))
        elif kind == RETIRE:
            self.producer.retire(payload.decode())
        elif kind == CONNECT:
            self._control(ident, self.producer.connect())
        elif kind == TOPIC_EXISTS:
            self._control(ident, self.producer.topic_exists())
        elif kind == CLOSE:
            self._control(ident, self.producer.close(), then=self._finish)

    def _settled(self, ident: int, fut: asyncio.Future[tuple[int, int]]) -> None:
        if fut.cancelled():
            self.writer.write(frame(FAIL, ident, b"producer retired"))
        elif (exc := fut.exception()) is not None:
            self.writer.write(frame(FAIL, ident, str(exc).encode()))
        else:
            self.writer.write(frame(ACK, ident, _ACK.pack(*fut.result())))

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def _control(self, ident: int, work: Any, then: Callable[[], None] | None = None) -> None:
        async def run() -> None:
            try:
                value = await work
            except ProducerUnavailable as exc:
                reply = {"ok": False, "error": str(exc)}
            except Exception as exc:  # reported to the bridge, which decides
                log.exception("producer process: control request failed")
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            else:
                reply = {"ok": True, "value": value}
            self.writer.write(frame(REPLY, ident, orjson.dumps(reply)))
            if then is not None:
                then()

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_lost(self, exc: Exception | None) -> None:
        self._finish()


async def serve_child(fd: int, config: ProducerConfig) -> None:
    """The child's main coroutine: serve the bridge on socket ``fd`` until it closes."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    writer = _Writer(loop)
    child = _Child(LocalProducer(config), writer, done)
    sock = socket.socket(fileno=fd)
    await loop.create_unix_connection(
        lambda: _Link(writer, child.on_frame, child.on_lost), sock=sock
    )
    await done
    if writer.transport is not None:
        writer.flush()
        writer.transport.close()
    else:
        # The bridge went away without CLOSE: nobody waits for acknowledgements any more.
        child.producer.retire("bridge gone")
        await child.producer.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m connectors.bridge.producer_process``: started by the bridge, not by hand."""
    parser = argparse.ArgumentParser(
        prog="python -m connectors.bridge.producer_process",
        description="The bridge's Kafka producer process (started by `synctrail bridge`).",
    )
    parser.add_argument("--fd", type=int, required=True, help="the socket to the bridge")
    parser.add_argument("--args", required=True, help="JSON: producer config, loop, logging")
    args = parser.parse_args(argv)
    # The bridge decides when this process stops (CLOSE, or its socket closing).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    options = orjson.loads(args.args)
    logs.configure(options["log_level"], options["log_format"])
    config = ProducerConfig(**options["config"])
    uvloop = uvloop_if_wanted(options["event_loop"], "SYNCTRAIL_BRIDGE_EVENT_LOOP")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if uvloop else None) as runner:
        runner.run(serve_child(args.fd, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
