"""Every alert has a runbook section in docs/operations.md, and its runbook_url points there."""

from __future__ import annotations

import re

import yaml

from tests.compose.promharness import ALERTS
from tests.support import REPO

RUNBOOK = REPO / "docs" / "operations.md"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_links_to_its_own_runbook_section():
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text().splitlines()
        if line.startswith("#")
    }
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert rules
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        path, anchor = url.split("#")
        assert path == "docs/operations.md", rule["alert"]
        assert anchor == rule["alert"].lower() and anchor in anchors, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]


def test_runbook_links_within_the_page_resolve():
    text = RUNBOOK.read_text()
    anchors = {
        github_anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")
    }
    for target in re.findall(r"\]\(#([^)]+)\)", text):
        assert target in anchors, target
