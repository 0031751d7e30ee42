"""The DORA micro-benchmark stays runnable (``python -m bench.dora``); speed never asserted."""

from __future__ import annotations

from tests.test_bench import bench


def test_dora_bench_prints_its_figures() -> None:
    figures = bench("bench.dora", "--rounds", "1", "--facts", "5", timeout=120)
    for name in ("record_deployment", "record_health", "changes", "deployment", "keys"):
        value, unit = figures[f"{name}_us"]
        assert value > 0 and unit == "us"
    sizes = [figures[f"history_bytes_{n}"] for n in (1, 10, 50)]
    assert all(unit == "bytes" for _, unit in sizes)
    assert 0 < sizes[0][0] < sizes[1][0] < sizes[2][0]
