"""The bridge's durable spool: accepted deliveries that could not reach Kafka yet.

Layout of the spool folder::

    00000000000000000007.seg   append-only segment files of framed records
    00000000000000000008.seg   (the highest number is the one being written)
    position                   JSON {"segment": 7, "offset": 4096}: first record not yet drained
    lock                       flock'd by the bridge that owns the folder (one writer only)

A frame is ``length:u32 | crc32:u32 | topic_len:u16 | key_len:u16 | topic | key | value`` (big
endian; ``length`` and the CRC cover everything after the CRC). An append is written with one
``write`` and made durable with ``fsync`` before the caller answers 202; concurrent appends share
one fsync (group commit). Draining reads frames from ``position``, and once Kafka acknowledged
them, moves ``position`` forward (write, fsync, rename) and deletes segments that hold nothing
undrained. A torn tail (a crash in the middle of a write) fails its length or CRC check: it is
reported and cut off at start-up, and a restarted spool always appends to a new segment.

Delivery from the spool is at-least-once: a crash between Kafka's acknowledgement and the
position write sends those records again (same ``delivery_id``; consumers dedupe).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

log = logging.getLogger(__name__)

_FRAME = struct.Struct(">II")  # body length, crc32(body)
_BODY = struct.Struct(">HH")  # topic length, key length
_SUFFIX = ".seg"
_POSITION = "position"
_LOCK = "lock"


class SpoolError(Exception):
    """The spool cannot take this record; the bridge answers 503 with Retry-After."""


class SpoolFull(SpoolError):
    """Taking the record would exceed the spool's size limit."""


class SpoolUnavailable(SpoolError):
    """The spool folder cannot be written (or made durable) right now."""


class SpoolInUse(RuntimeError):
    """Another process holds this spool folder: two writers would corrupt it."""


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    """One record read back from the spool, with where its frame ends."""

    topic: str
    key: bytes
    value: bytes
    segment: int
    end: int  # offset just past this frame in its segment
    size: int  # bytes of the whole frame


def encode_frame(topic: str, key: bytes, value: bytes) -> bytes:
    """One spool frame for a record."""
    t = topic.encode()
    body = _BODY.pack(len(t), len(key)) + t + key + value
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def decode_frames(data: bytes, start: int = 0) -> Iterator[tuple[int, int, str, bytes, bytes]]:
    """Yield ``(offset, end, topic, key, value)`` for each whole, intact frame from ``start``.

    Stops silently at the first incomplete or corrupt frame; the caller compares the last
    ``end`` with ``len(data)`` to detect a torn tail.
    """
    pos = start
    size = len(data)
    while pos + _FRAME.size <= size:
        length, crc = _FRAME.unpack_from(data, pos)
        body_start = pos + _FRAME.size
        end = body_start + length
        if length < _BODY.size or end > size:
            return
        body = data[body_start:end]
        if zlib.crc32(body) != crc:
            return
        tlen, klen = _BODY.unpack_from(body, 0)
        if _BODY.size + tlen + klen > length:
            return
        t0 = _BODY.size
        topic = body[t0 : t0 + tlen].decode(errors="replace")
        key = body[t0 + tlen : t0 + tlen + klen]
        value = body[t0 + tlen + klen :]
        yield pos, end, topic, key, value
        pos = end


def _segment_name(seq: int) -> str:
    return f"{seq:020d}{_SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """An on-disk FIFO of records, bounded by ``max_bytes`` of disk."""

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = 4 * 1024 * 1024):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.records = 0  # undrained records
        self.bytes = 0  # undrained frame bytes
        self.disk_bytes = 0  # bytes of every segment file (drained parts included)
        self.drained_total = 0
        self.error: str | None = None  # why the spool is unwritable, if it is
        self._pending: Counter[bytes] = Counter()  # undrained records per key
        self._sizes: dict[int, int] = {}  # segment seq -> file size
        self._position = (0, 0)
        self._active: int | None = None  # segment being appended to
        self._fds: dict[int, int] = {}  # open write fds by segment
        self._dirty: set[int] = set()  # segments written since the last fsync
        self._next_seq = 0
        self._written = 0
        self._synced = 0
        self._sync_task: asyncio.Future[None] | None = None
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ start-up and state

    def open(self) -> None:
        """Create the folder if needed and recover its records; sets ``error`` on failure.

        Raises :class:`SpoolInUse` if another process has the folder open.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock()
            self._recover()
            self.error = None
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error(
                "spool unusable", extra={"spool_dir": str(self.directory), "error": self.error}
            )

    def _lock(self) -> None:
        fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolInUse(
                f"spool folder {self.directory} is in use by another bridge; "
                "give each bridge its own SYNCTRAIL_BRIDGE_SPOOL_DIR"
            ) from None
        self._lock_fd = fd

    def _read_position(self) -> tuple[int, int]:
        path = self.directory / _POSITION
        try:
            data = orjson.loads(path.read_bytes())
            return int(data["segment"]), int(data["offset"])
        except FileNotFoundError:
            return (0, 0)
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            # Better to send some records twice than to lose any.
            log.error("spool position file unreadable; draining every segment from its start")
            return (0, 0)

    def _segments(self) -> list[int]:
        seqs = []
        for entry in self.directory.iterdir():
            if entry.name.endswith(_SUFFIX) and entry.name[: -len(_SUFFIX)].isdigit():
                seqs.append(int(entry.name[: -len(_SUFFIX)]))
        return sorted(seqs)

    def _recover(self) -> None:
        seg_pos, off_pos = self._read_position()
        self._position = (seg_pos, off_pos)
        self._pending.clear()
        self._sizes.clear()
        self.records = self.bytes = self.disk_bytes = 0
        seqs = self._segments()
        for seq in seqs:
            path = self.directory / _segment_name(seq)
            if seq < seg_pos:
                path.unlink(missing_ok=True)
                continue
            data = path.read_bytes()
            start = min(off_pos, len(data)) if seq == seg_pos else 0
            good_end = start
            for _, end, _topic, key, _value in decode_frames(data, start):
                self._pending[key] += 1
                self.records += 1
                good_end = end
            self.bytes += good_end - start
            if good_end < len(data):
                # A crash mid-write leaves a torn frame; nothing after it can be trusted.
                log.warning(
                    "spool segment has a torn or corrupt tail; cutting it off",
                    extra={
                        "segment": path.name,
                        "kept_bytes": good_end,
                        "dropped_bytes": len(data) - good_end,
                    },
                )
                with path.open("r+b") as fh:
                    fh.truncate(good_end)
                    os.fsync(fh.fileno())
            self._sizes[seq] = good_end
            self.disk_bytes += good_end
        # Never append after a tail we did not write in this run: start a new segment.
        self._next_seq = max([*seqs, seg_pos - 1]) + 1
        self._active = None
        if self.records:
            log.info(
                "spool holds undrained records",
                extra={
                    "records": self.records,
                    "bytes": self.bytes,
                    "spool_dir": str(self.directory),
                },
            )

    def pending(self, key: bytes) -> int:
        """Undrained records for ``key``."""
        return self._pending.get(key, 0)

    @property
    def writable(self) -> bool:
        """True when an append can be attempted (folder usable and not full)."""
        return self.error is None and self.disk_bytes < self.max_bytes

    # ------------------------------------------------------------------ appending

    def _open_segment(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        path = self.directory / _segment_name(seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fds[seq] = fd
        self._sizes[seq] = 0
        self._active = seq
        # The new file's directory entry must survive a crash too.
        _fsync_dir(self.directory)
        return seq

    def _roll_if_needed(self, frame_len: int) -> int:
        seq = self._active
        if seq is None or (
            self._sizes[seq] > 0 and self._sizes[seq] + frame_len > self.segment_bytes
        ):
            seq = self._open_segment()
        return seq

    async def append(self, topic: str, key: bytes, value: bytes) -> None:
        """Write one record and return once it is on disk (fsync'd).

        Raises :class:`SpoolFull` or :class:`SpoolUnavailable`; on either the record is not
        in the spool (unless only the fsync failed, when it may be drained later).
        """
        frame = encode_frame(topic, key, value)
        if self.disk_bytes + len(frame) > self.max_bytes:
            raise SpoolFull(f"spool full ({self.disk_bytes} of {self.max_bytes} bytes used)")
        try:
            if not self.directory.is_dir():
                self.directory.mkdir(parents=True, exist_ok=True)
            seq = self._roll_if_needed(len(frame))
            self._write(seq, frame)
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            raise SpoolUnavailable(f"spool not writable: {self.error}") from exc
        self.error = None
        self._pending[key] += 1
        self.records += 1
        self.bytes += len(frame)
        self._written += 1
        self._dirty.add(seq)
        await self._sync_through(self._written)

    def _write(self, seq: int, frame: bytes) -> None:
        fd = self._fds[seq]
        start = self._sizes[seq]
        view = memoryview(frame)
        try:
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError:
            # Leave no partial frame behind: the next append must start on a frame boundary.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            self._close_fd(seq)
            if self._active == seq:
                self._active = None
            raise
        self._sizes[seq] = start + len(frame)
        self.disk_bytes += len(frame)

    async def _sync_through(self, ticket: int) -> None:
        # Group commit: one fsync (in a thread) covers every write made before it started.
        while self._synced < ticket:
            if self._sync_task is None or self._sync_task.done():
                self._sync_task = asyncio.ensure_future(self._sync_round())
            task = self._sync_task
            await asyncio.shield(task)

    async def _sync_round(self) -> None:
        target = self._written
        dirty, self._dirty = self._dirty, set()
        fds = [self._fds[s] for s in dirty if s in self._fds]
        try:
            await asyncio.to_thread(_fsync_all, fds)
        except OSError as exc:
            self.error = f"fsync failed: {exc}"
            # After a failed fsync the kernel may have dropped those pages: write elsewhere.
            self._active = None
            self._synced = target
            raise SpoolUnavailable(self.error) from exc
        self._synced = max(self._synced, target)
        for seq in list(self._fds):
            if seq != self._active and seq not in self._dirty:
                self._close_fd(seq)

    def _close_fd(self, seq: int) -> None:
        fd = self._fds.pop(seq, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    # ------------------------------------------------------------------ draining

    def peek(self, limit: int) -> list[SpooledRecord]:
        """Up to ``limit`` undrained records, oldest first, without removing them."""
        out: list[SpooledRecord] = []
        if not self.records:
            return out
        seg, off = self._position
        for seq in sorted(self._sizes):
            if seq < seg:
                continue
            start = off if seq == seg else 0
            if start >= self._sizes[seq]:
                continue
            with (self.directory / _segment_name(seq)).open("rb") as fh:
                fh.seek(start)
                data = fh.read(self._sizes[seq] - start)
            for pos, end, topic, key, value in decode_frames(data):
                out.append(SpooledRecord(topic, key, value, seq, start + end, end - pos))
                if len(out) >= limit:
                    return out
        return out

    def commit(self, drained: list[SpooledRecord]) -> None:
        """Mark ``drained`` (a prefix of the last :meth:`peek`) as delivered, durably."""
        if not drained:
            return
        last = drained[-1]
        for rec in drained:
            self._pending[rec.key] -= 1
            if self._pending[rec.key] <= 0:
                del self._pending[rec.key]
            self.bytes -= rec.size
        self.records -= len(drained)
        self.drained_total += len(drained)
        if self.records == 0 and not self._dirty and not self._syncing():
            # Everything is out: start afresh in a new segment, drop every file.
            self._write_position((self._next_seq, 0))
            self._drop_segments_below(self._next_seq)
            self._active = None
            self.bytes = 0
        else:
            self._write_position((last.segment, last.end))
            self._drop_segments_below(last.segment)

    def _write_position(self, position: tuple[int, int]) -> None:
        tmp = self.directory / (_POSITION + ".tmp")
        with tmp.open("wb") as fh:
            fh.write(orjson.dumps({"segment": position[0], "offset": position[1]}))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.directory / _POSITION)
        _fsync_dir(self.directory)
        self._position = position

    def _syncing(self) -> bool:
        return self._sync_task is not None and not self._sync_task.done()

    def _drop_segments_below(self, seq: int) -> None:
        for old in [s for s in self._sizes if s < seq]:
            if not self._syncing():
                # A running fsync may still use the fd; its round closes it afterwards.
                self._close_fd(old)
            self._dirty.discard(old)
            (self.directory / _segment_name(old)).unlink(missing_ok=True)
            self.disk_bytes -= self._sizes.pop(old)
            if self._active == old:
                self._active = None

    def close(self) -> None:
        """Close open files (everything appended is already durable)."""
        for seq in list(self._fds):
            self._close_fd(seq)
        self._active = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


def _fsync_all(fds: list[int]) -> None:
    for fd in fds:
        os.fsync(fd)
