"""Validation micro-benchmark: decoding and checking webhook bodies, µs per body, no HTTP.

``python -m bench.validation`` decodes and validates every example payload
(``examples/payloads``, the same bodies as the shared fixtures) the way the bridge's hot path
must: the body is parsed, checked against the inbound contract, and the JSON object kept as
received (the record carries the ``syncResult`` unknown keys included). Contenders:

- ``handwritten``: the hand-written checker the bridge had before the inbound types
  (``connectors/bridge/validation.py`` at ``--handwritten-rev``, read from git), orjson plus
  dict walks;
- ``bridge``: ``connectors.bridge.validation`` as it is now (parse, check);
- ``msgspec_convert``: orjson parse, then ``msgspec.convert`` of that dict to the Structs of
  ``streams.domain.inbound`` (one parse; the validated view is the carried dict);
- ``msgspec_decode_twice``: ``msgspec.json.decode(raw, type=...)`` to validate, plus an orjson
  parse for the dict to carry;
- ``msgspec_untyped_convert``: ``msgspec.json.decode(raw)`` to a dict, then ``msgspec.convert``;
- ``msgspec_typed_only``: the typed decode alone (keeps no dict: a floor, not a contender);
- ``pydantic_python``: orjson parse, then a strict pydantic v2 ``TypeAdapter.validate_python``
  of models mirroring the Structs (``extra="ignore"``, camelCase aliases);
- ``pydantic_json``: pydantic's ``validate_json`` plus an orjson parse for the dict.

Each contender runs ``--rounds`` times over all bodies, interleaved (round-robin), and the
median per-body time is reported with its ratio to ``handwritten``. The identity-key byte check
(the same code for all) is left out. A second table times refusals (the invalid fixtures, and
edited valid bodies) through the bridge's full message path. The machine is shared: figures
are noisy; compare ratios from one run.

Output: ``BENCH validation.<contender>_us_per_body <value> us`` lines and a readable table.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson

from streams.domain.inbound import Envelope, SyncResult

REPO = Path(__file__).resolve().parents[1]
PAYLOADS = REPO / "examples" / "payloads"
HANDWRITTEN_REV = "2d06132"  # the last commit with the hand-written checker

Body = tuple[str, str, bytes]  # file, shape ("envelope" | "bare"), raw bytes
Check = Callable[[str, bytes], object]


def bodies() -> list[Body]:
    """Every example payload with its shape, in delivery order."""
    expected = orjson.loads((PAYLOADS / "expected.json").read_bytes())["payloads"]
    return [(e["file"], e["shape"], (PAYLOADS / e["file"]).read_bytes()) for e in expected]


def handwritten_module(rev: str) -> types.ModuleType | None:
    """``connectors/bridge/validation.py`` as it was at ``rev``, loaded as a module.

    ``None`` (and a note) when git cannot show it, e.g. outside a clone.
    """
    try:
        source = subprocess.run(
            ["git", "show", f"{rev}:connectors/bridge/validation.py"],
            cwd=REPO,
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        print(f"note: git cannot show {rev}:connectors/bridge/validation.py; ratios are to bridge")
        return None
    module = types.ModuleType("handwritten_validation")
    module.__file__ = f"{rev}:connectors/bridge/validation.py"
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def pydantic_adapters() -> tuple[Any, Any]:
    """Strict pydantic v2 models mirroring :mod:`streams.domain.inbound` (for comparison)."""
    from typing import Annotated, Literal

    from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
    from pydantic.alias_generators import to_camel

    label = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
    config = ConfigDict(strict=True, extra="ignore", alias_generator=to_camel)

    class Resource(BaseModel):
        model_config = config
        group: str
        version: str
        kind: str
        namespace: str
        name: str
        status: str | None = None  # pydantic has no UNSET; None stands for "absent" here
        message: str | None = None
        hook_type: str | None = None
        hook_phase: str | None = None
        sync_phase: str | None = None
        images: list[str] | None = None

    class SyncResultModel(BaseModel):
        model_config = config
        resources: list[Resource] | None = None
        revision: str | None = None
        revisions: list[str] | None = None
        source: dict[str, Any] | None = None
        sources: list[dict[str, Any]] | None = None
        managed_namespace_metadata: dict[str, Any] | None = None

    class App(BaseModel):
        model_config = config
        name: Annotated[str, Field(pattern=rf"^{label}(?:\.{label})*$", max_length=253)]
        namespace: Annotated[str, Field(pattern=rf"^(?:{label})?$", max_length=63)] = ""
        project: str | None = None
        uid: str | None = None

    class Destination(BaseModel):
        model_config = config
        server: str = ""
        name: str = ""
        namespace: str = ""

    class Operation(BaseModel):
        model_config = config
        phase: str
        started_at: str
        message: str | None = None
        finished_at: str | None = None
        initiated_by: dict[str, Any] | None = None
        retry_count: int = 0

    class EnvelopeModel(BaseModel):
        model_config = config
        schema_version: Literal[1] = 1
        app: App
        destination: Destination | None = None
        operation: Operation
        health: str | None = None
        sync_status: str | None = None
        revision: str | None = None
        revisions: list[str] | None = None
        sync_result: SyncResultModel | None = None

    return TypeAdapter(EnvelopeModel), TypeAdapter(SyncResultModel)


def contenders(rev: str) -> dict[str, Check]:
    """Each way of decoding and validating one body, as ``check(shape, raw)``."""
    from connectors.bridge import validation as bridge

    hand = handwritten_module(rev)
    env_adapter, bare_adapter = pydantic_adapters()
    convert = msgspec.convert
    decode = msgspec.json.decode
    loads = orjson.loads

    def handwritten(shape: str, raw: bytes) -> object:
        assert hand is not None
        body = hand.parse_json_object(raw)
        (hand.check_envelope if shape == "envelope" else hand.check_bare)(body)
        return body

    def bridge_now(shape: str, raw: bytes) -> object:
        body = bridge.parse_json_object(raw)
        (bridge.check_envelope if shape == "envelope" else bridge.check_bare)(body)
        return body

    def msgspec_convert(shape: str, raw: bytes) -> object:
        body = loads(raw)
        convert(body, Envelope if shape == "envelope" else SyncResult)
        return body

    def msgspec_decode_twice(shape: str, raw: bytes) -> object:
        decode(raw, type=Envelope if shape == "envelope" else SyncResult)
        return loads(raw)

    def msgspec_untyped_convert(shape: str, raw: bytes) -> object:
        body = decode(raw)
        convert(body, Envelope if shape == "envelope" else SyncResult)
        return body

    def msgspec_typed_only(shape: str, raw: bytes) -> object:
        return decode(raw, type=Envelope if shape == "envelope" else SyncResult)

    def pydantic_python(shape: str, raw: bytes) -> object:
        body = loads(raw)
        (env_adapter if shape == "envelope" else bare_adapter).validate_python(body)
        return body

    def pydantic_json(shape: str, raw: bytes) -> object:
        (env_adapter if shape == "envelope" else bare_adapter).validate_json(raw)
        return loads(raw)

    return {
        **({"handwritten": handwritten} if hand is not None else {}),
        "bridge": bridge_now,
        "msgspec_convert": msgspec_convert,
        "msgspec_decode_twice": msgspec_decode_twice,
        "msgspec_untyped_convert": msgspec_untyped_convert,
        "msgspec_typed_only": msgspec_typed_only,
        "pydantic_python": pydantic_python,
        "pydantic_json": pydantic_json,
    }


def time_per_body(check: Check, items: list[Body], repeat: int) -> float:
    """Seconds per body: ``repeat`` passes over ``items``, timed as one block."""
    start = time.perf_counter()
    for _ in range(repeat):
        for _, shape, raw in items:
            check(shape, raw)
    return (time.perf_counter() - start) / (repeat * len(items))


def refusals() -> list[Body]:
    """Bodies the bridge refuses with a list of problems (400) or the 422."""
    out: list[Body] = []
    fixtures = REPO.parent / "shared" / "fixtures"
    for name in ("invalid-wrong-types.json", "invalid-resources-not-a-list.json"):
        path = fixtures / name
        if path.exists():
            shape = "bare" if "resources-not" in name else "envelope"
            out.append((name, shape, path.read_bytes()))
    good = orjson.loads((PAYLOADS / "03-guestbook-rev-b.json").read_bytes())
    bad = copy.deepcopy(good)
    bad["syncResult"]["resources"][3]["images"] = "x"
    bad["app"]["name"] = "Guest Book"
    out.append(("edited-envelope", "envelope", orjson.dumps(bad)))
    out.append(
        (
            "bare-on-envelope-route",
            "envelope",
            (PAYLOADS / "02-payments-api-rev-a.json").read_bytes(),
        )
    )
    return out


def refusal_path(rev: str) -> dict[str, Check]:
    """The full refusal (every problem named) of the old and the current checker."""
    from connectors.bridge import validation as bridge

    hand = handwritten_module(rev)

    def run(module: Any) -> Check:
        def check(shape: str, raw: bytes) -> object:
            try:
                body = module.parse_json_object(raw)
                (module.check_envelope if shape == "envelope" else module.check_bare)(body)
            except module.Rejection as rej:
                return rej.problems
            raise AssertionError("accepted a body it must refuse")

        return check

    return {**({"handwritten": run(hand)} if hand is not None else {}), "bridge": run(bridge)}


def measure(checks: dict[str, Check], items: list[Body], rounds: int, repeat: int) -> dict:
    per_round: dict[str, list[float]] = {name: [] for name in checks}
    for check in checks.values():  # warm up (and check every contender accepts them)
        time_per_body(check, items, 3)
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            for name, check in checks.items():
                per_round[name].append(time_per_body(check, items, repeat))
    finally:
        gc.enable()
    return {name: statistics.median(values) * 1e6 for name, values in per_round.items()}


def report(title: str, key: str, medians: dict[str, float]) -> None:
    reference = "handwritten" if "handwritten" in medians else "bridge"
    base = medians[reference]
    print(f"\n{title}")
    print(f"  {'contender':<26}{'us/body':>10}{'vs ' + reference:>16}")
    for name, us in medians.items():
        print(f"  {name:<26}{us:>10.2f}{us / base:>15.2f}x")
    for name, us in medians.items():
        print(f"BENCH validation.{key}{name}_us_per_body {us:.2f} us")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.validation",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (median)")
    parser.add_argument("--repeat", type=int, default=200, help="passes over the bodies a round")
    parser.add_argument(
        "--handwritten-rev",
        default=HANDWRITTEN_REV,
        help="git revision whose connectors/bridge/validation.py is the hand-written checker",
    )
    args = parser.parse_args(argv)

    items = bodies()
    small = [b for b in items if len(b[2]) < 10_000]
    checks = contenders(args.handwritten_rev)
    total = sum(len(raw) for _, _, raw in items)
    print(f"{len(items)} bodies, {total} bytes; {len(small)} usual ones (< 10 kB)")
    report(
        "every example payload (mean per body):",
        "",
        measure(checks, items, args.rounds, args.repeat),
    )
    report(
        "usual payloads only (the 300-resource one left out):",
        "usual_",
        measure(checks, small, args.rounds, args.repeat),
    )
    report(
        "refusals, every problem named:",
        "refusal_",
        measure(refusal_path(args.handwritten_rev), refusals(), args.rounds, args.repeat),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
