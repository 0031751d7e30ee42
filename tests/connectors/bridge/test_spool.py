"""The durable spool on its own: order, recovery, torn tails, limits (files only, no broker)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from connectors.bridge.spool import (
    Spool,
    SpoolFull,
    SpoolUnavailable,
    decode_frames,
    encode_frame,
)

TOPIC = "p.sync-events"


def _open(path: Path, max_bytes: int = 1 << 20, segment_bytes: int = 4096) -> Spool:
    spool = Spool(path, max_bytes, segment_bytes)
    spool.open()
    assert spool.error is None
    return spool


async def _fill(spool: Spool, n: int, keys: int = 3, size: int = 100) -> list[tuple[bytes, bytes]]:
    items = []
    for i in range(n):
        key = f"argocd/app-{i % keys}".encode()
        value = f"{i:06d}".encode() + b"x" * size
        await spool.append(TOPIC, key, value)
        items.append((key, value))
    return items


def _segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def test_frames_round_trip() -> None:
    data = encode_frame(TOPIC, b"ns/app", b"{}") + encode_frame("t2", b"", b"v" * 300)
    frames = list(decode_frames(data))
    assert [(f[2], f[3], f[4]) for f in frames] == [
        (TOPIC, b"ns/app", b"{}"),
        ("t2", b"", b"v" * 300),
    ]
    assert frames[-1][1] == len(data)


def test_a_flipped_bit_ends_decoding_at_the_damaged_frame() -> None:
    first = encode_frame(TOPIC, b"k", b"one")
    second = bytearray(encode_frame(TOPIC, b"k", b"two"))
    second[-1] ^= 0x01
    frames = list(decode_frames(first + bytes(second)))
    assert [f[4] for f in frames] == [b"one"]


async def test_records_come_back_in_append_order_across_segments(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    items = await _fill(spool, 100)
    assert len(_segments(tmp_path)) > 1  # 100 x ~130 bytes over 4 KiB segments
    got = spool.peek(1000)
    assert [(r.key, r.value) for r in got] == items
    assert spool.records == 100 and spool.pending(b"argocd/app-0") == 34


async def test_commit_removes_drained_records_and_their_segments(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    items = await _fill(spool, 100)
    first = spool.peek(60)
    spool.commit(first)
    assert spool.records == 40 and spool.drained_total == 60
    assert [(r.key, r.value) for r in spool.peek(1000)] == items[60:]
    spool.commit(spool.peek(1000))
    assert spool.records == 0 and spool.bytes == 0 and spool.disk_bytes == 0
    assert _segments(tmp_path) == []
    assert spool.pending(b"argocd/app-0") == 0


async def test_a_reopened_spool_resumes_after_the_committed_position(tmp_path: Path) -> None:
    spool = _open(tmp_path)
    items = await _fill(spool, 50)
    spool.commit(spool.peek(20))
    spool.close()  # nothing else is flushed on close: every append was already fsync'd
    again = _open(tmp_path)
    assert again.records == 30
    assert [(r.key, r.value) for r in again.peek(1000)] == items[20:]
    more = await _fill(again, 5)
    assert [(r.key, r.value) for r in again.peek(1000)] == items[20:] + more


async def test_a_torn_tail_is_cut_off_and_earlier_records_survive(tmp_path: Path) -> None:
    spool = _open(tmp_path, segment_bytes=1 << 20)
    items = await _fill(spool, 10)
    spool.close()
    [segment] = _segments(tmp_path)
    whole = segment.stat().st_size
    with segment.open("ab") as fh:  # a crash in the middle of the 11th write
        fh.write(encode_frame(TOPIC, b"argocd/app-0", b"z" * 200)[:57])
    again = _open(tmp_path)
    assert again.records == 10
    assert segment.stat().st_size == whole
    assert [(r.key, r.value) for r in again.peek(1000)] == items
    await again.append(TOPIC, b"argocd/app-1", b"after")
    assert again.peek(1000)[-1].value == b"after"


async def test_a_corrupt_position_file_drains_everything_again_rather_than_lose(
    tmp_path: Path,
) -> None:
    spool = _open(tmp_path)
    items = await _fill(spool, 10)
    spool.commit(spool.peek(4))
    spool.close()
    (tmp_path / "position").write_bytes(b"{garbage")
    again = _open(tmp_path)
    assert [(r.key, r.value) for r in again.peek(1000)] == items


async def test_full_spool_refuses_and_keeps_what_it_has(tmp_path: Path) -> None:
    spool = _open(tmp_path, max_bytes=2048, segment_bytes=1024)
    accepted = 0
    with pytest.raises(SpoolFull):
        for i in range(100):
            await spool.append(TOPIC, b"k", f"{i:04d}".encode() * 50)
            accepted += 1
    assert 0 < accepted < 100
    assert spool.disk_bytes <= 2048
    assert len(spool.peek(1000)) == accepted
    spool.commit(spool.peek(1000))
    await spool.append(TOPIC, b"k", b"room again")
    assert spool.records == 1


async def test_unwritable_folder_is_reported_not_raised_at_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    spool = Spool(blocker / "spool", 1 << 20)
    spool.open()
    assert spool.error is not None and not spool.writable
    with pytest.raises(SpoolUnavailable):
        await spool.append(TOPIC, b"k", b"v")


async def test_concurrent_appends_share_fsyncs_and_all_land(tmp_path: Path, monkeypatch) -> None:
    import asyncio

    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    spool = _open(tmp_path, segment_bytes=1 << 20)
    await asyncio.gather(*(spool.append(TOPIC, b"k", f"{i}".encode()) for i in range(200)))
    assert spool.records == 200
    assert sorted(int(r.value) for r in spool.peek(1000)) == list(range(200))
    assert len(calls) < 100  # group commit: far fewer fsyncs than appends


def test_a_spool_folder_has_one_owner_at_a_time(tmp_path: Path) -> None:
    from connectors.bridge.spool import SpoolInUse

    first = _open(tmp_path)
    with pytest.raises(SpoolInUse, match="SYNCTRAIL_BRIDGE_SPOOL_DIR"):
        Spool(tmp_path, 1 << 20).open()
    first.close()
    _open(tmp_path).close()
