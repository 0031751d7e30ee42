"""A real Prometheus for tests: Debian's ``prometheus`` binary on loopback, scraping given targets.

Use it to prove that every PromQL expression of the Grafana dashboards and of the alert rules
evaluates through Prometheus's HTTP API, and that the panels fed by the running processes return
data. Typical use (see tests/compose/test_real_prometheus.py)::

    prom = RealPrometheus(tmp_path, [Target("synctrail-exporter", "127.0.0.1:9108")])
    await prom.start()                      # waits until every target is up
    errors = await prom.evaluate(all_expressions())
    assert errors == {}, errors
    prom.stop()

Job names must be the ones compose/prometheus/prometheus.yml uses (``synctrail-bridge``,
``synctrail-worker``, ``synctrail-slack``, ``synctrail-exporter``): rules select on them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from connectors.broker import die_with_parent, free_port
from tests.support import REPO, wait_for

COMPOSE = REPO / "compose"
DASHBOARD = COMPOSE / "grafana" / "dashboards" / "synctrail.json"
DORA_DASHBOARD = COMPOSE / "grafana" / "dashboards" / "dora.json"
DASHBOARDS = (DASHBOARD, DORA_DASHBOARD)
ALERTS = COMPOSE / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = COMPOSE / "prometheus" / "prometheus.yml"

INSTALL_HINT = (
    "Debian's `prometheus` package provides prometheus and promtool: "
    "`apt-get update && apt-get install -y --no-install-recommends prometheus`"
)

# Grafana's macros and the dashboards' variables, as a query from Grafana would expand them
# with a short scrape interval: [$__rate_interval] must span at least two scrapes. In order:
# $__range_s before $__range, which is its prefix.
GRAFANA_SUBSTITUTIONS = {
    "$__rate_interval": "10s",
    "$__interval": "5s",
    "$__range_s": "300",
    "$__range": "5m",
    "${app:regex}": ".*",
    "${app}": ".*",
    "$app": ".*",
    "${project:regex}": ".*",
    "${project}": ".*",
    "$project": ".*",
}


class BinaryMissing(RuntimeError):
    """promtool or prometheus is not installed."""


def binary(name: str) -> str:
    """Path of ``name`` (``prometheus`` or ``promtool``); raise with the install hint if absent."""
    path = shutil.which(name)
    if path is None:
        raise BinaryMissing(f"`{name}` is not on PATH. {INSTALL_HINT}")
    return path


@dataclass(frozen=True)
class Target:
    """One scrape target: its job name and ``host:port``."""

    job: str
    address: str
    metrics_path: str = "/metrics"


@dataclass(frozen=True)
class Expression:
    """One PromQL expression and where it comes from (dashboard panel or alert rule)."""

    source: str
    promql: str


def grafana_to_promql(expr: str) -> str:
    """Expand Grafana's macros and variables the way a dashboard query would be sent."""
    for macro, value in GRAFANA_SUBSTITUTIONS.items():
        expr = expr.replace(macro, value)
    return expr


def panels_of(panels: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Every panel, rows and the panels nested in collapsed rows included."""
    for panel in panels:
        yield panel
        yield from panels_of(panel.get("panels", []))  # collapsed rows nest their panels


def dashboard_expressions(path: Path = DASHBOARD) -> list[Expression]:
    """Every query of the dashboard: panel targets and ``label_values`` variable queries."""
    dashboard = json.loads(path.read_text())
    found = []
    for panel in panels_of(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                source = f"panel {panel.get('title')!r} target {target.get('refId')}"
                found.append(Expression(source, grafana_to_promql(target["expr"])))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*label_values\((.+),\s*\w+\)\s*", text or "")
        if match:
            promql = grafana_to_promql(match.group(1))  # a variable may use an earlier one
            found.append(Expression(f"variable {variable['name']}", promql))
    return found


def rule_expressions(path: Path = ALERTS) -> list[Expression]:
    """Every alerting and recording rule expression of a rule file."""
    rules = yaml.safe_load(path.read_text())
    return [
        Expression(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def all_dashboard_expressions() -> list[Expression]:
    """The expressions of every provisioned dashboard, their sources naming the dashboard."""
    return [
        Expression(f"{path.name} {e.source}", e.promql)
        for path in DASHBOARDS
        for e in dashboard_expressions(path)
    ]


def all_expressions() -> list[Expression]:
    """The dashboards' and the alert rules' expressions."""
    return all_dashboard_expressions() + rule_expressions()


@dataclass
class RealPrometheus:
    """Debian's prometheus on a free loopback port with a generated config.

    ``rule_files`` default to the compose alert rules so their evaluation health is visible
    through ``rule_health()``. ``stop()`` is safe to call twice.
    """

    workdir: Path
    targets: Sequence[Target]
    rule_files: Sequence[Path] = (ALERTS,)
    scrape_interval: str = "1s"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        """The prometheus.yml this instance runs with, as a dict."""
        jobs: dict[str, list[Target]] = {}
        for target in self.targets:
            jobs.setdefault(target.job, []).append(target)
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
            },
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "metrics_path": group[0].metrics_path,
                    "static_configs": [{"targets": [t.address for t in group]}],
                }
                for job, group in jobs.items()
            ],
        }

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    async def start(self, timeout: float = 30.0) -> RealPrometheus:
        """Start prometheus and wait until it is ready and every target is up."""
        self.spawn()
        await wait_for(self._ready, timeout=timeout, interval=0.1, what="prometheus /-/ready")
        await self.wait_targets_up(timeout)
        return self

    def spawn(self) -> None:
        """Start the prometheus process (without waiting for it)."""
        exe = binary("prometheus")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        with (self.workdir / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    exe,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=die_with_parent,
            )

    async def _ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log()}")
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session,
                session.get(f"{self.url}/-/ready") as response,
            ):
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _api(self, path: str, **params: str) -> Any:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"{self.url}/api/v1/{path}", params=params) as response,
        ):
            body = await response.json(content_type=None)
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def target_health(self) -> dict[str, str]:
        """``job/address`` → ``up``/``down``/``unknown`` for every active target."""
        data = await self._api("targets", state="active")
        return {
            f"{t['labels']['job']}/{t['labels']['instance']}": t["health"]
            for t in data["activeTargets"]
        }

    async def wait_targets_up(self, timeout: float = 30.0) -> None:
        """Wait until every configured target has been scraped successfully."""

        async def all_up() -> bool:
            health = await self.target_health()
            return len(health) == len(self.targets) and all(h == "up" for h in health.values())

        await wait_for(all_up, timeout=timeout, interval=0.2, what="every target up")

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """Evaluate ``promql`` now (``/api/v1/query``); raise ``PromQLError`` on an error."""
        data = await self._api("query", query=promql)
        result = data["result"]
        # Scalars and strings come back as one [time, value] pair, not a vector.
        return result if isinstance(result, list) else [{"value": result}]

    async def evaluate(self, expressions: Iterable[Expression]) -> dict[str, str]:
        """Evaluate every expression; returns ``source: error`` for each one that failed."""
        errors = {}
        for expression in expressions:
            try:
                await self.query(expression.promql)
            except PromQLError as exc:
                errors[expression.source] = f"{exc} in {expression.promql!r}"
        return errors

    async def without_data(self, expressions: Iterable[Expression]) -> list[str]:
        """Sources of the expressions that evaluate to an empty result."""
        return [e.source for e in expressions if not await self.query(e.promql)]

    async def rule_health(self) -> dict[str, tuple[str, str]]:
        """Rule name → (health, last error) for every loaded rule (health ``unknown`` until
        its first evaluation)."""
        data = await self._api("rules")
        return {
            rule["name"]: (rule.get("health", ""), rule.get("lastError", ""))
            for group in data["groups"]
            for rule in group["rules"]
        }

    async def alerts(self) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts."""
        return list((await self._api("alerts"))["alerts"])

    def stop(self) -> None:
        """Terminate prometheus and wait for it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


class PromQLError(RuntimeError):
    """Prometheus's HTTP API answered with an error."""


async def wait_for_samples(prometheus: RealPrometheus, samples: int = 3) -> None:
    """Wait until every target has ``samples`` scrapes stored, so range functions have data."""

    async def enough() -> bool:
        result = await prometheus.query("min(count_over_time(up[1m]))")
        return bool(result) and float(result[0]["value"][1]) >= samples

    await wait_for(enough, timeout=30, interval=0.2, what=f"{samples} scrapes of every target")
