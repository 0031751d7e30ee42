"""The one RFC 3339 formatter: the same bytes the three formatters it replaced wrote."""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime, timedelta, timezone

import orjson
from hypothesis import given
from hypothesis import strategies as st

from streams.domain import timestamps
from streams.logs import JsonFormatter

RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# 2001 .. 2100, with microseconds
unix_times = st.floats(min_value=978_307_200, max_value=4_102_444_800, allow_nan=False)
moments = st.datetimes(
    min_value=datetime(2001, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(unix_times)
def test_a_unix_time_is_written_as_the_bridge_and_the_json_logs_wrote_it(seconds: float):
    whole = int(seconds)
    bridge = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
    bridge += f"{int((seconds - whole) * 1000):03d}Z"
    logs = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    logs += f".{int(int((seconds - int(seconds)) * 1000) + 0.0):03d}Z"  # LogRecord.msecs
    assert timestamps.format_unix(seconds) == bridge == logs
    assert RFC3339_MS.fullmatch(timestamps.format_unix(seconds))


@given(moments, st.integers(min_value=-14 * 60, max_value=14 * 60))
def test_a_datetime_is_written_as_the_worker_and_the_slack_connector_wrote_it(
    moment: datetime, offset_minutes: int
):
    worker = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.")
    worker += f"{moment.microsecond // 1000:03d}Z"
    slack = moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    assert timestamps.format_datetime(moment) == worker == slack
    elsewhere = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    assert timestamps.format_datetime(elsewhere) == worker


def test_the_same_instant_reads_the_same_from_a_unix_time_or_a_datetime():
    moment = datetime(2026, 7, 6, 9, 13, 42, 123000, tzinfo=UTC)
    assert timestamps.format_datetime(moment) == "2026-07-06T09:13:42.123Z"
    assert timestamps.format_unix(1783329222.1234) == "2026-07-06T09:13:42.123Z"
    assert timestamps.format_unix(1783329222.9999) == "2026-07-06T09:13:42.999Z"  # truncated
    assert timestamps.format_unix(1783329223.0) == "2026-07-06T09:13:43.000Z"  # next second
    assert RFC3339_MS.fullmatch(timestamps.now())


@given(moments)
def test_what_is_written_reads_back_to_the_millisecond(moment: datetime):
    assert timestamps.parse(timestamps.format_datetime(moment)) == moment.replace(
        microsecond=moment.microsecond // 1000 * 1000
    )


def test_parsing_takes_offsets_and_gives_none_for_what_is_not_a_time():
    assert timestamps.parse("2026-07-06T09:00:00Z") == datetime(2026, 7, 6, 9, tzinfo=UTC)
    assert timestamps.parse("2026-07-06T11:00:00+02:00") == datetime(2026, 7, 6, 9, tzinfo=UTC)
    assert timestamps.parse("2026-07-06T09:00:00") == datetime(2026, 7, 6, 9, tzinfo=UTC)
    assert timestamps.parse("yesterday") is None
    assert timestamps.parse("") is None
    assert timestamps.parse(None) is None


def test_json_log_lines_carry_the_same_timestamp():
    record = logging.LogRecord("synctrail", logging.INFO, __file__, 1, "hello", None, None)
    record.created, record.msecs = 1783329222.1234, 123.0
    line = orjson.loads(JsonFormatter().format(record))
    assert line["ts"] == "2026-07-06T09:13:42.123Z"


@given(unix_times)
def test_a_millisecond_epoch_is_written_as_dora_and_cloudevents_wrote_it(seconds: float):
    from streams.domain import cloudevents, dora

    epoch = round(seconds, 3)  # how dora keeps its times
    moment = datetime.fromtimestamp(epoch, UTC)
    before = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    assert dora._iso(epoch) == cloudevents.unix_to_rfc3339(epoch) == before
    assert timestamps.parse(before) == moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def test_what_is_not_a_string_does_not_parse():
    assert timestamps.parse(1783329222) is None
    assert timestamps.parse({"at": "2026-07-06T09:00:00Z"}) is None
