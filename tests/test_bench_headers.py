"""The headers micro-benchmark stays runnable (``python -m bench.headers``); speed never asserted."""

from __future__ import annotations

import importlib.util

from tests.test_bench import bench


def test_headers_bench_prints_its_figures() -> None:
    figures = bench("bench.headers", "--rounds", "1", "--repeat", "1", timeout=120)
    assert figures["records_per_pass"][0] > 0
    for name in ("ours", "id", "dumps"):
        value, unit = figures[f"{name}_us_per_record"]
        assert value > 0 and unit == "us"
    assert figures["ours_vs_dumps"][1] == "x"
    with_sdk = importlib.util.find_spec("cloudevents") is not None
    assert ("sdk_v1_vs_ours" in figures) == with_sdk
