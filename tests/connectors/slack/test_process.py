"""``synctrail slack`` as a child process: crash safety, console mode, graceful SIGTERM."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from streams.domain.render import render_deployment
from tests.connectors.slack.support import notification, produce_notes, slack_env
from tests.slack_server import Reply, SlackServer
from tests.streams.domain.test_render import fixture_deployments
from tests.support import Service, wait_for


async def test_killed_between_post_and_commit_restarts_without_posting_again(
    broker, topics, slack_server: SlackServer, tmp_path: Path
):
    keys = [f"crash-{i}" for i in range(5)]
    # The third post reaches Slack, but its answer never comes back: the connector is
    # SIGKILLed while it waits, after Slack accepted the message and before the connector
    # wrote "posted" or committed the offset.
    slack_server.script("chat.postMessage", Reply.normal(), Reply.normal(), Reply.hang())
    await produce_notes(broker.bootstrap, topics, [notification(k) for k in keys])
    env = slack_env(broker.bootstrap, topics, slack_server)

    first = Service(["slack"], env, tmp_path / "slack-1.log").start()
    try:
        await wait_for(lambda: len(slack_server.posts()) >= 3, timeout=60, what="three posts")
    finally:
        first.kill()
    slack_server.release_hangs()
    assert [p.key for p in slack_server.posts()] == keys[:3]

    second = Service(["slack"], env, tmp_path / "slack-2.log").start()
    try:
        await wait_for(
            lambda: len(slack_server.posts()) >= 5, timeout=60, what="the remaining posts"
        )
        await wait_for(
            lambda: "found in Slack history after an interrupted post" in second.log(),
            timeout=30,
            what="the interrupted post to be recognised",
        )
    finally:
        code = second.stop()
    assert code == 0, second.log()
    posted = Counter(p.key for p in slack_server.posts())
    assert posted == Counter(keys), f"posted: {posted}"
    # the restarted connector asked Slack about the interrupted key before anything else
    history = slack_server.calls_to("conversations.history")
    assert history and history[0].params["include_all_metadata"] in ("1", "true")


async def test_console_mode_prints_the_rendered_message_and_stops_on_sigterm(
    broker, topics, tmp_path: Path
):
    text, blocks = render_deployment(
        fixture_deployments()["03-guestbook-rev-b.json"], argocd_url="https://argocd.example"
    )
    await produce_notes(
        broker.bootstrap, topics, [notification("console-1", text=text, blocks=blocks)]
    )
    env = slack_env(
        broker.bootstrap,
        topics,
        SlackServer(),  # not started: console mode never calls it
        SYNCTRAIL_SLACK_TOKEN="",
        SYNCTRAIL_SLACK_WEBHOOK_URL="",
    )
    service = Service(["slack"], env, tmp_path / "console.log").start()
    try:
        await wait_for(
            lambda: "Changed resources (2)" in service.log(), timeout=60, what="console output"
        )
    finally:
        code = service.stop()
    out = service.log()
    assert code == 0, out
    assert "#deployments  🚀 guestbook → " in out
    assert (
        "App:         argocd/guestbook (https://argocd.example/applications/argocd/guestbook)"
        in out
    )
    assert "• ghcr.io/acme/guestbook-ui: :v1.4.0 → :v1.5.0" in out
    assert '"mode": "console"' in out or '"mode":"console"' in out
