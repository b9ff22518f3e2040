"""Fixtures for the core tests; the helpers live in ``oomtest_helpers``."""

from __future__ import annotations

import pytest


@pytest.fixture
def write(tmp_path):
    """write("name.toml", text) -> path"""
    def _write(name: str, text: str):
        path = tmp_path / name
        path.write_text(text)
        return path
    return _write
