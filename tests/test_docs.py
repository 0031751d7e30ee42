"""Docs that must match the code: the README's commands and settings table, .env.example, and
the contract pages in docs/ (complete, linked, and pointing at nothing outside the repository)."""

from __future__ import annotations

import json
import os
import re
from fnmatch import fnmatch
from pathlib import Path

from connectors.bridge.server import create_app
from connectors.bridge.settings import BridgeSettings
from connectors.settings_doc import env_example, markdown, rows
from streams.domain import decide, policy, state
from streams.kafka.topics import ALL_TOPICS
from tests.support import REPO


def test_readme_opens_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make run" in first_block and "make test" in first_block


def test_readme_settings_table_is_generated_from_the_settings_classes():
    readme = (REPO / "README.md").read_text()
    table = re.search(r"<!-- settings:begin -->\n(.*?)<!-- settings:end -->", readme, re.S)
    assert table is not None
    assert table.group(1) == markdown(), "run: python -m connectors.settings_doc"


def test_env_example_lists_every_variable():
    assert (REPO / ".env.example").read_text() == env_example()
    assert len(rows()) > 40


def test_ci_runs_the_readme_test_command():
    assert "make test" in (REPO / ".ci" / "run").read_text()


# -- the contract pages: in the repository, linked, complete ---------------------------------

# Where the founding design and the fixtures' notes live on the developers' machines only: a
# user who clones the repository has neither, so no doc may send them there.
OUTSIDE_POINTERS = re.compile(
    r"DESIGN\.md|DESIGN's|\.\./shared|/work/shared|shared/fixtures|fixtures'? README", re.I
)
SKIPPED_DIRS = {".git", ".venv", "var", "node_modules", ".pytest_cache", ".ruff_cache"}
DOC_PAGES = ("README.md", "docs/contract-http.md", "docs/topics.md", "docs/derivation.md")


def _repo_files(*patterns: str) -> list[Path]:
    """The repository's files matching any of ``patterns``, skipping tool and data folders."""
    found = []
    for folder, dirs, names in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        found += [Path(folder, n) for n in names if any(fnmatch(n, p) for p in patterns)]
    return sorted(found)


def _without_code_blocks(markdown_text: str) -> str:
    return re.sub(r"^```.*?^```", "", markdown_text, flags=re.S | re.M)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(markdown_text: str) -> set[str]:
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _without_code_blocks(markdown_text), re.M):
        anchor, n = _anchor(heading), 1
        while anchor in anchors:  # GitHub numbers repeated headings: x, x-1, x-2
            anchor = f"{_anchor(heading)}-{n}"
            n += 1
        anchors.add(anchor)
    return anchors


def test_no_doc_points_at_the_design_notes_outside_the_repository():
    files = [*_repo_files("*.md", "*.yaml", "*.yml", "*.json", "*.py"), REPO / "Makefile"]
    offenders = []
    for path in files:
        rel = path.relative_to(REPO)
        if rel.parts[0] == "tests" and path.suffix == ".py":
            continue  # the tests read the shared fixtures as their oracle; that is not a doc
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE_POINTERS.search(line):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "point at docs/ instead:\n" + "\n".join(offenders)


def test_every_link_in_the_docs_reaches_a_file_and_heading_of_the_repository():
    broken = []
    for page in _repo_files("*.md"):
        text = _without_code_blocks(page.read_text())
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked here
            file_part, _, anchor = target.partition("#")
            linked = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(REPO)} → {target}"
            if not linked.exists():
                broken.append(f"{where}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text()):
                broken.append(f"{where}: no such heading")
    assert not broken, "\n".join(broken)


def test_the_readme_links_every_contract_page():
    readme = (REPO / "README.md").read_text()
    for page in DOC_PAGES[1:]:
        assert f"]({page}" in readme, f"README.md does not link {page}"


def test_topics_page_names_every_topic_and_every_schema_file():
    text = (REPO / "docs" / "topics.md").read_text()
    for spec in ALL_TOPICS:
        assert f"`{spec.name}`" in text, f"docs/topics.md does not name the topic {spec.name}"
        assert f"`{spec.schema}`" in text, f"docs/topics.md does not name {spec.schema}"
    for path in sorted((REPO / "schemas").iterdir()):
        assert f"../schemas/{path.name}" in text, f"docs/topics.md does not link {path.name}"
    for title in (json.loads(p.read_text())["title"] for p in (REPO / "schemas").glob("*.json")):
        assert f"`{title}`" in text, f"docs/topics.md does not name {title}"


def test_topics_page_lists_every_metric_kind():
    text = (REPO / "docs" / "topics.md").read_text()
    metric = json.loads((REPO / "schemas" / "metric.v1.json").read_text())
    for kind in metric["properties"]["kind"]["enum"]:
        assert f"| `{kind}` |" in text, f"docs/topics.md does not describe metric kind {kind}"


def test_http_contract_names_every_route_and_every_status_the_bridge_answers(tmp_path):
    text = (REPO / "docs" / "contract-http.md").read_text()
    app = create_app(BridgeSettings(bridge_allow_anonymous=True, bridge_spool_dir=tmp_path))
    paths = {r.canonical for r in app.router.resources()} - {"/{path}"}  # the 404 catch-all
    assert {"/v1/sync", "/v1/sync/{app}", "/v1/sync/{app_namespace}/{app}"} <= paths
    for path in paths:
        assert f"`{path}`" in text, f"docs/contract-http.md does not name the route {path}"
    # every refusal the bridge raises, the answers it builds itself, aiohttp's 404 and 405
    code = "".join(p.read_text() for p in (REPO / "connectors" / "bridge").glob("*.py"))
    statuses = {int(s) for s in re.findall(r"Rejection\(\s*(\d{3})", code)}
    assert {400, 401, 413, 422} <= statuses
    for status in statuses | {202, 503, 404, 405}:
        assert f"`{status}`" in text, f"docs/contract-http.md does not explain status {status}"
    assert f"{BridgeSettings().bridge_max_body_bytes}" in text, "the documented size limit"


def test_derivation_page_names_every_outcome_change_category_and_policy_verdict():
    text = (REPO / "docs" / "derivation.md").read_text()
    words = [decide.DUPLICATE, decide.RESYNC, decide.STALE, policy.DENYLIST, policy.UNEXPECTED]
    words += [c for name, c in vars(state).items() if name.startswith("CHANGE_")]
    words += [state.CREATED, state.CONFIGURED, state.REPLACED, state.UNCHANGED]
    words += [state.SYNCED, state.SYNC_FAILED, state.PRUNED, state.PRUNE_SKIPPED]
    for word in words:
        assert f"`{word}`" in text, f"docs/derivation.md does not explain `{word}`"


def test_contract_pages_name_only_settings_that_exist():
    known = {variable for variable, *_ in rows()}
    for page in DOC_PAGES[1:]:
        named = set(re.findall(r"SYNCTRAIL_[A-Z0-9_]+", (REPO / page).read_text()))
        assert named <= known, f"{page} names unknown settings: {sorted(named - known)}"
