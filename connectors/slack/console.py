"""Console mode: a Block Kit message as readable terminal text (pure).

This is what ``make run`` shows a new user with no Slack credentials: the same message the
Slack connector would post, with links spelled out and mrkdwn markup removed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_LINK = re.compile(r"<([^<>|]+)\|([^<>]*)>")
_BARE_LINK = re.compile(r"<([^<>|]+)>")
_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")
_ITALIC = re.compile(r"(?<![\w_])_([^_\n]+)_(?![\w_])")
_EMOJI = {
    ":rotating_light:": "🚨",
    ":x:": "❌",
    ":warning:": "\u26a0\ufe0f",
    ":information_source:": "\u2139\ufe0f",
}
WIDTH = 78


def plain(mrkdwn: str) -> str:
    """mrkdwn → plain text: ``<url|label>`` → ``label (url)``, markup dropped, entities undone."""
    text = _LINK.sub(
        lambda m: m.group(2) if m.group(2) == m.group(1) else f"{m.group(2)} ({m.group(1)})", mrkdwn
    )
    text = _BARE_LINK.sub(lambda m: m.group(1), text)
    text = _BOLD.sub(r"\1", text)
    text = _ITALIC.sub(r"\1", text)
    text = text.replace("`", "")
    text = re.sub(r"(?m)^>", "│ ", text)  # block quotes, before "&gt;" becomes ">" below
    for code, emoji in _EMOJI.items():
        text = text.replace(code, emoji)
    # Entities last, so an escaped "&lt;" never turns into a link above.
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _indent(text: str, prefix: str = "  ") -> list[str]:
    return [prefix + line if line else "" for line in text.split("\n")]


def _block_lines(block: dict[str, Any]) -> list[str]:
    kind = block.get("type")
    if kind == "header":
        return [str(block.get("text", {}).get("text", ""))]
    if kind == "divider":
        return ["  " + "─" * (WIDTH - 2)]
    if kind == "context":
        parts = [plain(str(e.get("text", ""))) for e in block.get("elements", []) if "text" in e]
        return _indent(" · ".join(parts), "  ")
    lines: list[str] = []
    if kind == "section":
        if "text" in block:
            lines += _indent(plain(str(block["text"].get("text", ""))))
        for f in block.get("fields", []):
            label, _, value = plain(str(f.get("text", ""))).partition("\n")
            value_lines = value.split("\n") if value else [""]
            lines.append(f"  {label + ':':<13}{value_lines[0]}")
            lines += [" " * 15 + v for v in value_lines[1:]]
    return lines


def format_message(channel: str, text: str, blocks: Sequence[dict[str, Any]]) -> str:
    """The whole message as terminal text, framed, ending with a blank line."""
    body: list[str] = []
    for block in blocks:
        body += _block_lines(block)
    if not body:
        body = _indent(plain(text))
    rule = "━" * WIDTH
    return "\n".join([rule, f"{channel}  {body[0]}", *body[1:], rule, ""]) + "\n"
