"""The table of every ``SYNCTRAIL_*`` variable, generated from the settings classes.

``python -m connectors.settings_doc`` prints the Markdown table that README.md carries and
``python -m connectors.settings_doc --env`` prints ``.env.example``; a test keeps both in step.
``synctrail <process> --help`` ends with :func:`help_text` of its process.
"""

from __future__ import annotations

import sys
import textwrap
from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from connectors.bridge.settings import BridgeSettings
from connectors.dead_letters import DeadLetterReplaySettings
from connectors.exporter.settings import ExporterSettings
from connectors.slack.settings import SlackSettings
from streams.settings import CommonSettings, WorkerSettings

# (process, settings class); CommonSettings first: its variables apply to every process
PROCESSES: tuple[tuple[str, type[BaseSettings]], ...] = (
    ("all", CommonSettings),
    ("worker", WorkerSettings),
    ("bridge", BridgeSettings),
    ("slack", SlackSettings),
    ("exporter", ExporterSettings),
    ("replay-dead-letters", DeadLetterReplaySettings),
)


def _default(field: Any) -> str:
    default = field.default
    if default is None:
        return "none"
    if isinstance(default, SecretStr):
        return "none" if not default.get_secret_value() else "(set)"
    return f"`{default}`" if str(default) != "" else '`""`'


def rows() -> list[tuple[str, str, str, str]]:
    """(variable, processes, default, meaning) for every variable, in declaration order."""
    seen: dict[str, tuple[list[str], Any]] = {}
    for process, cls in PROCESSES:
        for name, field in cls.model_fields.items():
            variable = f"SYNCTRAIL_{name.upper()}"
            if variable not in seen:
                seen[variable] = ([process], field)
            elif "all" not in seen[variable][0]:
                seen[variable][0].append(process)
    return [
        (
            variable,
            ", ".join(processes),
            _default(field),
            (field.description or "").replace("|", "\\|"),
        )
        for variable, (processes, field) in seen.items()
    ]


def help_text(process: str) -> str:
    """Every variable ``process`` reads, with its default and meaning, for its ``--help``."""
    lines = ["settings (environment variables; every one is in README.md):"]
    for name, field in dict(PROCESSES)[process].model_fields.items():
        lines.append(f"  SYNCTRAIL_{name.upper()}  (default: {_default(field).strip('`')})")
        plain = (field.description or "").replace("`", "")
        lines += textwrap.wrap(plain, 88, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines) + "\n"


def markdown() -> str:
    """The README table."""
    lines = ["| variable | process | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{v}` | {p} | {d} | {m} |" for v, p, d, m in rows()]
    return "\n".join(lines) + "\n"


def env_example() -> str:
    """``.env.example``: every variable commented out at its default."""
    out = [
        "# Every synctrail setting with its default. Copy to .env and point",
        "# SYNCTRAIL_ENV_FILE at it, or export the variables.",
        "",
    ]
    for variable, process, default, meaning in rows():
        out.append(f"# {meaning} ({process})")
        value = "" if default in ("none", "(set)") else default.strip("`").replace('""', "")
        out.append(f"# {variable}={value}")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(env_example() if "--env" in sys.argv else markdown())
