"""Settings of the metrics exporter (`synctrail exporter`)."""

from __future__ import annotations

from pydantic import Field

from streams.settings import CommonSettings


class ExporterSettings(CommonSettings):
    """The metrics exporter: where it listens and how much it remembers."""

    exporter_host: str = Field(
        "127.0.0.1", description="Listen address of /metrics, /healthz and /readyz."
    )
    exporter_port: int = Field(9108, ge=1, le=65535, description="Listen port of the exporter.")
    exporter_max_apps: int = Field(
        500,
        ge=1,
        description="Distinct `app` label values the exporter keeps; events of further apps are "
        'folded into `app="_other"` and counted in synctrail_exporter_apps_folded_total.',
    )
    exporter_dedupe_window: int = Field(
        100_000,
        ge=1,
        description="Most recent facts (kind, app, delivery id, rule; a DORA finding's "
        "identity) remembered to ignore at-least-once replays of the same fact; about 150 "
        "bytes each.",
    )
