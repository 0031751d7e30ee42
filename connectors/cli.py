"""The ``synctrail`` command: one subcommand per process.

Arguments are declared here (so ``--help`` is fast and complete); each subcommand's module is
imported only when it runs and exposes ``run(args) -> int``. A service's ``--help`` ends with
the ``SYNCTRAIL_*`` variables it reads, generated from its settings class when asked for.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

DESCRIPTION = """\
synctrail turns Argo CD sync webhooks into deployment facts: Kafka topics, Slack messages and
Prometheus metrics. Every setting is a SYNCTRAIL_* environment variable (see README.md).
"""

# subcommand -> module that implements run(args)
_COMMANDS: dict[str, str] = {
    "dev": "connectors.dev",
    "broker": "connectors.broker_command",
    "bridge": "connectors.bridge.server",
    "worker": "streams.worker",
    "slack": "connectors.slack.service",
    "exporter": "connectors.exporter",
    "replay": "connectors.replay",
    "tail": "connectors.tail",
    "policy": "connectors.policy_command",
    "replay-dead-letters": "connectors.dead_letters",
    "topics": "connectors.topics_command",
}
# subcommands that talk to the configured Kafka: their connection is checked at start
_KAFKA_COMMANDS = frozenset(
    {"bridge", "worker", "slack", "exporter", "tail", "policy", "replay-dead-letters", "topics"}
)


class _CommandParser(argparse.ArgumentParser):
    """A parser whose help can end with the settings of one process (``settings_of``)."""

    def __init__(self, *args: Any, settings_of: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings_of = settings_of

    def format_help(self) -> str:
        """argparse's help, then the process's variables (imported only for ``--help``)."""
        text = super().format_help()
        if self.settings_of is None:
            return text
        from connectors.settings_doc import help_text

        return f"{text}\n{help_text(self.settings_of)}"


_Commands = argparse._SubParsersAction  # what add_subparsers returns
#: descriptions keep their line breaks
_KEEP_LINES = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = _CommandParser(
        prog="synctrail",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_process_commands(sub)
    _add_client_commands(sub)
    _add_policy_command(sub)
    _add_operations_commands(sub)
    return parser


def _add_process_commands(sub: _Commands) -> None:
    """The long-running processes: dev, broker, bridge, worker, slack, exporter."""
    sub.add_parser(
        "dev",
        help="embedded broker + bridge + worker + Slack console + exporter in one process tree",
        description="Start everything on a laptop. Ctrl-C stops it all.",
    )

    broker = sub.add_parser("broker", help="run only the embedded Kafka-protocol broker")
    broker.add_argument("--port", type=int, default=None, help="listen port (default: a free one)")
    broker.add_argument("--host", default="127.0.0.1", help="listen address (default: loopback)")

    sub.add_parser(
        "bridge",
        help="HTTP receiver for Argo CD webhooks → sync-events",
        description="Receive Argo CD's webhooks (POST /v1/sync, /v1/sync/{app},\n"
        "/v1/sync/{app_namespace}/{app}) and publish each to <prefix>sync-events once Kafka\n"
        "acknowledged it, or spool it to disk while Kafka is unreachable. Serves /healthz,\n"
        "/readyz and /metrics. SIGTERM: stop accepting, finish in-flight requests, flush.",
        formatter_class=_KEEP_LINES,
        settings_of="bridge",
    )
    sub.add_parser(
        "worker",
        help="Faust worker: dedupe, diff, policy → deployments and more",
        description="Consume <prefix>sync-events and <prefix>policy; keep each app's state;\n"
        "publish deployments, notifications, metrics, violations, remediations and\n"
        "dead-letters. Query API and /metrics on SYNCTRAIL_WORKER_WEB_PORT.",
        formatter_class=_KEEP_LINES,
        settings_of="worker",
    )
    sub.add_parser(
        "slack",
        help="post notifications to Slack (console output without credentials)",
        description="Post <prefix>notifications to Slack (bot token or incoming webhook), once\n"
        "per idempotency key, within Slack's rate limits; print them instead when neither\n"
        "is set.",
        formatter_class=_KEEP_LINES,
        settings_of="slack",
    )
    sub.add_parser(
        "exporter",
        help="fold metric events into Prometheus series on /metrics",
        description="Fold <prefix>metrics into Prometheus series, rebuilt from the topic on\n"
        "every start, and serve them on /metrics.",
        formatter_class=_KEEP_LINES,
        settings_of="exporter",
    )


def _add_client_commands(sub: _Commands) -> None:
    """Replay payload files to a bridge; tail a topic."""
    replay = sub.add_parser(
        "replay",
        help="POST payload files (a folder in name order) to a bridge",
        description="An envelope goes to /v1/sync; a bare syncResult goes to the app route given "
        "by --app, or by the requestPath an expected.json beside the files names.",
    )
    replay.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    replay.add_argument(
        "--url", default=None, help="bridge base URL (default: from SYNCTRAIL_BRIDGE_HOST/PORT)"
    )
    replay.add_argument(
        "--token", default=None, help="bearer token (default: first of SYNCTRAIL_BRIDGE_TOKENS)"
    )
    replay.add_argument("--app", default=None, metavar="NS/NAME", help="app for bare bodies")

    tail = sub.add_parser("tail", help="print a topic's records as JSON lines")
    tail.add_argument("topic", help="topic name, with or without the prefix (e.g. deployments)")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    tail.add_argument("--follow", action="store_true", help="keep waiting for new records")


def _add_policy_command(sub: _Commands) -> None:
    """``synctrail policy deny|allow|rm|list``."""
    policy = sub.add_parser("policy", help="add, remove or list policy rules at runtime")
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    deny = psub.add_parser("deny", help="denylist an image (exact, repo:tag-glob or digest)")
    deny.add_argument("image", help="image reference, e.g. nginx:1.25.* or repo@sha256:…")
    deny.add_argument("--reason", required=True, help="why (shown in Slack and records)")
    deny.add_argument("--id", default=None, help="rule id (default: derived from the image)")
    allow = psub.add_parser("allow", help="allow only these registries/repositories for apps")
    allow.add_argument("patterns", nargs="+", help="registry or repository globs")
    allow.add_argument("--apps", default="*", help="app glob (ns/name or name)")
    allow.add_argument("--projects", default="*", help="project glob")
    allow.add_argument("--namespaces", default="*", help="destination namespace glob")
    allow.add_argument("--id", default=None, help="rule id")
    rm = psub.add_parser("rm", help="remove a rule by id")
    rm.add_argument("rule_id")
    psub.add_parser("list", help="list the rules in force")


def _add_operations_commands(sub: _Commands) -> None:
    """Replay dead letters; create or check the topics."""
    dead = sub.add_parser(
        "replay-dead-letters",
        help="send dead-lettered records back to their source topic",
        settings_of="replay-dead-letters",
    )
    dead.add_argument("--dry-run", action="store_true", help="only print what would be sent")
    dead.add_argument(
        "--from-beginning", action="store_true", help="ignore earlier runs' progress, replay all"
    )

    topics = sub.add_parser(
        "topics",
        help="create every synctrail topic (or --check them)",
        description="Create every synctrail topic under SYNCTRAIL_TOPIC_PREFIX with\n"
        "SYNCTRAIL_PARTITIONS partitions and SYNCTRAIL_REPLICATION_FACTOR replicas (compacted\n"
        "where the contract says so), and the worker's table changelog\n"
        "(<SYNCTRAIL_WORKER_ID>-apps-changelog). Existing topics are left untouched.",
        formatter_class=_KEEP_LINES,
        settings_of="all",
    )
    tsub = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    create = tsub.add_parser(
        "create",
        help="create the missing topics (idempotent)",
        description="Create the missing topics; with --check, create nothing and exit 1 when\n"
        "a topic is missing or has another partition count, replication factor or\n"
        "cleanup.policy.",
        formatter_class=_KEEP_LINES,
        settings_of="all",
    )
    create.add_argument("--check", action="store_true", help="only verify; exit 1 on a mismatch")


def _settings_error(command: str, exc: ValidationError) -> str:
    """One line per invalid setting, naming its variable; never the value given."""
    lines = [f"synctrail {command}: invalid settings"]
    for error in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(part) for part in error["loc"])
        where = f"SYNCTRAIL_{field.upper()}: " if field else ""
        lines.append(f"  {where}{error['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def _check_kafka(command: str) -> None:
    """Connect once the way the command's clients will; exit on a configuration error."""
    from streams import logs
    from streams.kafka.client import check_at_start
    from streams.settings import CommonSettings

    settings = CommonSettings()
    logs.configure(settings.log_level, settings.log_format)
    check_at_start(settings)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``synctrail`` console script."""
    args = build_parser().parse_args(argv)
    module = importlib.import_module(_COMMANDS[args.command])
    try:
        if args.command in _KAFKA_COMMANDS:
            _check_kafka(args.command)
        return int(module.run(args) or 0)
    except ValidationError as exc:
        print(_settings_error(args.command, exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
