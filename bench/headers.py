"""Cost per record of the CloudEvents headers: ``streams.domain.cloudevents`` vs the SDK.

``python -m bench.headers`` times, on the real records the example payloads give (each
deployment, its notification and metric, in the proportions the worker writes them), how long
it takes to get a record's Kafka headers (aiokafka's ``list[(str, bytes)]``):

- ``ours_us_per_record``: :func:`streams.domain.cloudevents.headers`;
- ``id_us_per_record``: of which the ``ce_id`` alone (:func:`event_id` on the record's identity);
- ``dumps_us_per_record``: for scale, ``orjson.dumps`` of the same records (what the worker
  already spends on each value); ``ours_vs_dumps`` is the ratio, steadier than the absolute
  figures when other jobs share the cores;
- ``sdk_v1_us_per_record``: the ``cloudevents`` SDK's Kafka binding as ``cloudevents.kafka`` was
  until 2.0 (``cloudevents.v1.kafka.to_binary`` on a ``cloudevents.v1.http.CloudEvent``);
- ``sdk_core_us_per_record``: the SDK 2.x binding (``cloudevents.core.bindings.kafka.to_binary``
  on a ``cloudevents.core.v1.event.CloudEvent``, ``time`` parsed into a ``datetime`` as it
  requires).

The SDK paths get the same attributes ours computes (the SDK does not derive ids or times from
a record), the value already serialised (passed through, not re-encoded), and their header dict
turned into the list aiokafka takes. So the difference is what the SDK itself costs.

The SDK is not a dependency of synctrail: ``pip install cloudevents==2.2.0`` into the venv to
measure it; without it only our figures are printed. Rounds alternate between the
implementations and the median of ``--rounds`` is reported; on a shared machine the figures are
noisy, compare them within one run. Output: ``BENCH <name> <value> <unit>`` lines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from connectors.bridge.events import bare_event, envelope_event
from streams.domain.cloudevents import event_id, event_type, headers, identity
from streams.domain.decide import decide
from streams.domain.notify import NotifyConfig, deployment_notifications

PAYLOADS = Path(__file__).resolve().parents[1] / "examples" / "payloads"
SOURCE = "/synctrail/bench"
NOW = datetime(2026, 11, 28, 10, 0, 0, tzinfo=UTC)


def records() -> list[tuple[str, dict[str, Any]]]:
    """(key, record) of what the worker writes for the example payloads, in order."""
    entries = orjson.loads((PAYLOADS / "expected.json").read_bytes())["payloads"]
    states: dict[str, Any] = {}
    out: list[tuple[str, dict[str, Any]]] = []
    for n, entry in enumerate(entries, 1):
        raw = (PAYLOADS / entry["file"]).read_bytes()
        body = orjson.loads(raw)
        ids = {"delivery_id": f"{n:032x}", "received_at": f"2026-11-28T09:{n:02d}:00.000Z"}
        if entry["shape"] == "envelope":
            event = envelope_event(body, raw, default_namespace="argocd", **ids)
        else:
            namespace, name = entry["app"].split("/")
            event = bare_event(body, raw, namespace=namespace, name=name, **ids)
        decision = decide(event, states.get(entry["app"]), [], now=NOW)
        if decision.state is not None:
            states[entry["app"]] = decision.state
        if decision.deployment is not None:
            out.append((entry["app"], decision.deployment))
            notes = deployment_notifications(decision.deployment, NotifyConfig(), NOW)
            out += [(entry["app"], r) for r in notes]
        out += [(entry["app"], m) for m in decision.metrics]
    return out


def _ours(batch: list[tuple[str, dict[str, Any], bytes]]) -> None:
    for key, record, _ in batch:
        headers(record["schema"], record, key, SOURCE)


def _dumps(batch: list[tuple[str, dict[str, Any], bytes]]) -> None:
    for _, record, _ in batch:
        orjson.dumps(record)


def _ids(batch: list[tuple[str, dict[str, Any], bytes]]) -> None:
    for _, record, _ in batch:
        schema = record["schema"]
        event_id(event_type(schema), identity(schema, record)[0])


def _attributes(key: str, record: dict[str, Any]) -> dict[str, Any]:
    schema = record["schema"]
    type_ = event_type(schema)
    fields, when = identity(schema, record)
    return {
        "id": event_id(type_, fields),
        "source": SOURCE,
        "type": type_,
        "specversion": "1.0",
        "time": when,
        "subject": key,
        "datacontenttype": "application/json",
    }


def _sdk_v1() -> Callable[[list[tuple[str, dict[str, Any], bytes]]], None]:
    from cloudevents.v1.http import CloudEvent
    from cloudevents.v1.kafka import to_binary

    def passthrough(data: Any) -> Any:
        return data

    def run(batch: list[tuple[str, dict[str, Any], bytes]]) -> None:
        for key, record, value in batch:
            message = to_binary(
                CloudEvent(_attributes(key, record), value), data_marshaller=passthrough
            )
            list(message.headers.items())

    return run


def _sdk_core() -> Callable[[list[tuple[str, dict[str, Any], bytes]]], None]:
    from cloudevents.core.bindings.kafka import to_binary
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    json_format = JSONFormat()

    def run(batch: list[tuple[str, dict[str, Any], bytes]]) -> None:
        for key, record, value in batch:
            attributes = _attributes(key, record)
            attributes["time"] = datetime.fromisoformat(attributes["time"])
            message = to_binary(CloudEvent(attributes, value), json_format)
            list(message.headers.items())

    return run


def _time_per_record(run: Callable[[Any], None], batch: list[Any], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        run(batch)
    return (time.perf_counter() - start) / (repeat * len(batch)) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.headers", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (median)")
    parser.add_argument("--repeat", type=int, default=200, help="passes over the records a round")
    args = parser.parse_args(argv)

    batch = [(key, record, orjson.dumps(record)) for key, record in records()]
    runs: dict[str, Callable[[Any], None]] = {"ours": _ours, "id": _ids, "dumps": _dumps}
    try:
        runs["sdk_v1"] = _sdk_v1()
        runs["sdk_core"] = _sdk_core()
    except ImportError:
        print("the cloudevents SDK is not installed: measuring ours only", file=sys.stderr)
    for run in runs.values():  # warm up caches and imports
        run(batch)
    figures: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            figures[name].append(_time_per_record(run, batch, args.repeat))
    print(f"BENCH records_per_pass {len(batch)} records")
    for name, values in figures.items():
        print(f"BENCH {name}_us_per_record {statistics.median(values):.2f} us")
    ours = statistics.median(figures["ours"])
    print(f"BENCH ours_vs_dumps {ours / statistics.median(figures['dumps']):.2f} x")
    if "sdk_v1" in figures:
        for sdk in ("sdk_v1", "sdk_core"):
            print(f"BENCH {sdk}_vs_ours {statistics.median(figures[sdk]) / ours:.2f} x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
