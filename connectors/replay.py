"""``synctrail replay PATH...``: POST webhook payload files to a bridge, in order.

A folder is replayed in file-name order (only ``*.json`` files; ``expected.json`` and READMEs
are skipped). An envelope goes to ``/v1/sync``; a bare syncResult goes to the app route named by
``--app NS/NAME`` or by the ``requestPath`` that an ``expected.json`` beside the file gives (the
layout of the shared fixtures and ``examples/payloads``). Each answer is printed on one line;
the exit code is 1 if any POST did not get a 2xx answer.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import orjson

from connectors.bridge.settings import BridgeSettings

ENVELOPE_ROUTE = "/v1/sync"
_SKIP_NAMES = {"expected.json"}


@dataclass(frozen=True, slots=True)
class Post:
    """One file to POST, where to, or why it cannot be posted."""

    path: Path
    route: str | None
    problem: str | None = None


def payload_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders (name order, ``*.json`` only, no ``expected.json``); keep files as given."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix == ".json" and p.name not in _SKIP_NAMES
            )
        else:
            files.append(path)
    return files


@cache
def _request_paths(folder: Path) -> dict[str, str]:
    """``file name -> requestPath`` from ``folder/expected.json``, if there is one."""
    try:
        data = orjson.loads((folder / "expected.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    entries = data.get("payloads", []) if isinstance(data, dict) else data
    return {
        e["file"]: e["requestPath"]
        for e in entries
        if isinstance(e, dict) and isinstance(e.get("file"), str) and e.get("requestPath")
    }


def app_route(app: str) -> str:
    """The bare-body route for ``NS/NAME`` (or ``NAME``, default namespace)."""
    return f"{ENVELOPE_ROUTE}/{app.strip('/')}"


def is_envelope(body: Any) -> bool:
    """True for the envelope shape (it carries ``app``/``schemaVersion``)."""
    return isinstance(body, dict) and ("app" in body or "schemaVersion" in body)


def plan(path: Path, raw: bytes, app: str | None) -> Post:
    """Where ``path`` (with bytes ``raw``) should be POSTed."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None  # still posted: the bridge's answer says what is wrong with it
    if is_envelope(body):
        return Post(path, ENVELOPE_ROUTE)
    if app:
        return Post(path, app_route(app))
    request_path = _request_paths(path.resolve().parent).get(path.name)
    if request_path:
        return Post(path, request_path)
    if body is None:
        return Post(path, ENVELOPE_ROUTE)
    return Post(
        path,
        None,
        "bare syncResult without an app: pass --app NS/NAME or put an expected.json with its "
        "requestPath beside it",
    )


def default_url_and_token() -> tuple[str, str | None]:
    """Bridge URL and first bearer token from the ``SYNCTRAIL_BRIDGE_*`` settings."""
    settings = BridgeSettings()
    tokens = settings.token_list()
    return settings.base_url(), tokens[0].decode() if tokens else None


async def replay(
    paths: list[Path],
    url: str,
    token: str | None,
    app: str | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """POST every payload in order and print each answer; 0 if all got a 2xx answer."""
    files = payload_files(paths)
    if not files:
        print("nothing to replay: no payload files found", file=out)
        return 1
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    failures = 0
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(base_url=url.rstrip("/") + "/", timeout=timeout) as session:
        for path in files:
            try:
                raw = path.read_bytes()
            except OSError as exc:
                print(f"{path.name}: cannot read: {exc}", file=out)
                failures += 1
                continue
            post = plan(path, raw, app)
            if post.route is None:
                print(f"{path.name}: skipped: {post.problem}", file=out)
                failures += 1
                continue
            try:
                async with session.post(post.route.lstrip("/"), data=raw, headers=headers) as resp:
                    text = (await resp.text()).strip()
                    status = resp.status
            except aiohttp.ClientError as exc:
                print(f"{path.name} -> POST {post.route}: failed: {exc}", file=out)
                failures += 1
                continue
            print(f"{path.name} -> POST {post.route}: {status} {text}", file=out, flush=True)
            if not 200 <= status < 300:
                failures += 1
    if failures:
        print(f"{failures} of {len(files)} payloads failed", file=out)
    return 1 if failures else 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``synctrail replay``."""
    url, token = default_url_and_token()
    return asyncio.run(
        replay(
            [Path(p) for p in args.paths],
            args.url or url,
            args.token if args.token is not None else token,
            args.app,
        )
    )
