"""``synctrail slack``: post ``<prefix>notifications`` to Slack, at most once each.

Modules: ``settings`` (SYNCTRAIL_SLACK_*), ``connector`` (consume → lanes → commit),
``sending`` (Web API, webhook and console senders; retries), ``pacing`` (per-channel spacing,
backoff), ``state`` (the compacted ``<prefix>slack-state`` topic), ``offsets`` (what may be
committed), ``console`` (terminal rendering), ``metrics`` (/metrics, /healthz) and ``service``
(process entry point, signals).
"""
