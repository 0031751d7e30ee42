"""Pure parts of the Slack connector: pacing, backoff, error classes, offsets, state, console."""

from __future__ import annotations

import io

import orjson
import pytest

from connectors.slack.console import format_message, plain
from connectors.slack.notification import InvalidNotification, parse_notification, thread_day
from connectors.slack.offsets import OffsetTracker
from connectors.slack.pacing import ChannelPacer, backoff_delay, parse_retry_after
from connectors.slack.sending import ConsoleSender, Message, classify_status
from connectors.slack.state import SlackState, Source, entry, thread_key
from streams.domain.render import render_deployment
from tests.connectors.slack.support import notification
from tests.streams.domain.test_render import fixture_deployments


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pacer_spaces_one_channel_and_leaves_others_free() -> None:
    clock = FakeClock()
    pacer = ChannelPacer(1.0, clock)
    assert pacer.delay("#a") == 0
    pacer._next["#a"] = clock.now + 1.0  # as acquire() leaves it
    assert pacer.delay("#a") == pytest.approx(1.0)
    assert pacer.delay("#b") == 0
    clock.now += 0.4
    assert pacer.delay("#a") == pytest.approx(0.6)


def test_pacer_hold_extends_but_never_shortens_the_wait() -> None:
    clock = FakeClock()
    pacer = ChannelPacer(1.0, clock)
    pacer.hold("#a", 30)
    pacer.hold("#a", 2)
    assert pacer.delay("#a") == pytest.approx(30)


async def test_pacer_acquire_waits_for_the_slot() -> None:
    pacer = ChannelPacer(0.05)
    assert await pacer.acquire("#a") == 0
    waited = await pacer.acquire("#a")
    assert waited == pytest.approx(0.05, abs=0.02)


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    lows = [backoff_delay(n, 1.0, 30.0, rng=lambda: 0.0) for n in range(1, 8)]
    highs = [backoff_delay(n, 1.0, 30.0, rng=lambda: 1.0) for n in range(1, 8)]
    assert lows == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert highs == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


@pytest.mark.parametrize(
    ("value", "seconds"), [("2", 2.0), ("0.5", 0.5), (None, 1.0), ("soon", 1.0), ("-3", 1.0)]
)
def test_retry_after_header(value: str | None, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize(
    ("status", "error", "outcome"),
    [
        (429, "ratelimited", "rate_limited"),
        (500, "", "server_error"),
        (503, "", "server_error"),
        (200, "internal_error", "server_error"),
        (200, "invalid_auth", "permanent"),
        (200, "channel_not_found", "permanent"),
        (200, "not_in_channel", "permanent"),
        (200, "msg_too_long", "permanent"),
        (200, "is_archived", "permanent"),
        (404, "channel_not_found", "permanent"),
        (200, "some_new_error", "permanent"),
    ],
)
def test_errors_are_classified(status: int, error: str, outcome: str) -> None:
    attempt = classify_status(status, error, {"Retry-After": "7"})
    assert attempt.outcome == outcome
    if outcome == "rate_limited":
        assert attempt.retry_after == 7.0


def test_offsets_commit_only_past_a_finished_run() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    for offset in (10, 11, 12, 13):
        tracker.add("p0", offset)
    tracker.done("p0", 12)
    assert tracker.to_commit() == {}
    tracker.done("p0", 10)
    assert tracker.to_commit() == {"p0": 11}
    tracker.committed({"p0": 11})
    assert tracker.to_commit() == {}
    tracker.done("p0", 11)
    assert tracker.to_commit() == {"p0": 13}
    assert tracker.in_flight() == 1 and tracker.first_pending("p0") == 13
    tracker.forget(["p0"])
    tracker.done("p0", 13)  # a revoked partition's late finish is ignored
    assert tracker.to_commit() == {}


def test_state_actions() -> None:
    state = SlackState()
    here = Source("t", 0, 5)
    assert state.action("k", here) == "post"
    state.apply("k", entry("intent", "k"))
    assert state.action("k", here) == "check_then_post"
    state.apply("k", entry("posted", "k", ts="1.2"))
    assert state.action("k", here) == "skip_posted"
    state.apply("k", entry("dead_lettered", "k", source=here.as_json()))
    assert state.action("k", here) == "skip_dead_lettered"
    assert state.action("k", Source("t", 0, 99)) == "post"  # replayed from the dead letters
    state.apply("k", None)
    assert state.action("k", here) == "post"


def test_state_expiry_keeps_intents_and_channel_ids() -> None:
    state = SlackState()
    state.apply("old", entry("posted", "old", at=0))
    state.apply("new", entry("posted", "new", at=1000))
    state.apply("pending", entry("intent", "pending", at=0))
    state.apply(thread_key("#a", "argocd/x", "2026-01-01"), entry("thread", "t", at=0))
    state.apply("channel:#a", entry("channel", "channel:#a", at=0, channel_id="C1"))
    assert sorted(state.expired(1000, 500)) == ["old", "thread:#a:argocd/x:2026-01-01"]
    assert state.channel_id("#a") == "C1"
    assert state.channel_id("C0123ABC") == "C0123ABC"
    assert state.channel_id("#unknown") is None


def test_a_reply_goes_into_the_thread_of_a_message_posted_to_the_same_channel() -> None:
    state = SlackState()
    state.apply("root", entry("posted", "root", channel="#a", ts="1.1"))
    state.apply("reply", entry("posted", "reply", channel="#a", ts="1.5", thread_ts="1.1"))
    state.apply("elsewhere", entry("posted", "elsewhere", channel="#b", ts="2.0"))
    state.apply("pending", entry("intent", "pending", channel="#a"))
    state.apply("gave-up", entry("dead_lettered", "gave-up", channel="#a"))
    assert state.reply_ts("root", "#a") == "1.1"
    assert state.reply_ts("reply", "#a") == "1.1"  # Slack threads do not nest
    for key in ("elsewhere", "pending", "gave-up", "unknown"):
        assert state.reply_ts(key, "#a") is None, key


def test_an_earlier_notification_without_thread_under_still_parses() -> None:
    note = parse_notification(orjson.dumps(notification("k")))
    assert note.thread_under is None and note.kind == "deployment"
    health = {**notification("h"), "kind": "health", "thread_under": "k"}
    assert parse_notification(orjson.dumps(health)).thread_under == "k"


def test_notification_parsing_rejects_what_cannot_be_posted() -> None:
    good = notification("k1")
    assert parse_notification(orjson.dumps(good)).idempotency_key == "k1"
    for raw, why in [
        (None, "tombstone"),
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"schema": "other"}', "schema"),
        (orjson.dumps({**good, "idempotency_key": ""}), "idempotency_key"),
        (orjson.dumps({**good, "text": " "}), "text"),
    ]:
        with pytest.raises(InvalidNotification, match=why):
            parse_notification(raw)


def test_thread_day_comes_from_created_at() -> None:
    note = notification("k", created_at="2026-07-06T23:59:59.000Z")
    assert thread_day(note["created_at"]) == "2026-07-06"
    assert len(thread_day("garbage")) == 10


def test_plain_turns_mrkdwn_into_terminal_text() -> None:
    assert plain("*App*\n<https://a.example/x?a=1&amp;b=2|argocd/guestbook>") == (
        "App\nargocd/guestbook (https://a.example/x?a=1&b=2)"
    )
    assert plain("`img` &lt;b&gt; _none_ :rotating_light:") == "img <b> none 🚨"


async def test_console_sender_prints_a_readable_message() -> None:
    out = io.StringIO()
    text, blocks = render_deployment(
        fixture_deployments()["03-guestbook-rev-b.json"], argocd_url="https://argocd.example"
    )
    attempt = await ConsoleSender(out).post(Message("k", "#deployments", text, blocks))
    assert attempt.outcome == "posted"
    printed = out.getvalue()
    lines = printed.splitlines()
    assert lines[1].startswith("#deployments  🚀 guestbook → ")
    assert (
        "  App:         argocd/guestbook (https://argocd.example/applications/argocd/guestbook)"
        in lines
    )
    assert "  • ghcr.io/acme/guestbook-ui: :v1.4.0 → :v1.5.0" in lines
    assert "  Changed resources (2) · 4 unchanged" in lines
    assert "<" not in printed.replace("<https", "")  # no mrkdwn link syntax left


def test_console_falls_back_to_text_without_blocks() -> None:
    printed = format_message("#x", "guestbook deployed abc &amp; more", [])
    assert "#x    guestbook deployed abc & more" in printed
