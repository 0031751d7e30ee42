"""Docs that must match the code: the README's commands and settings table, .env.example."""

from __future__ import annotations

import re

from connectors.settings_doc import env_example, markdown, rows
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
