"""The man pages: the committed man/ is what ``python -m oomkit.manpages`` makes
from the click commands and the config schema, and ``man -l`` renders each page
without a warning."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import click
import msgspec
import pytest

from oomkit import manpages
from oomkit.cli import main
from oomkit.config.daemon import AttachSpec, DaemonSpec

MAN = Path(__file__).resolve().parents[2] / "man"


@pytest.mark.parametrize("name", ["oomkit.1", "oomkit.toml.5"])
def test_committed_pages_are_the_generated_ones(name):
    assert (MAN / name).read_text() == manpages.pages()[name], \
        f"man/{name} is stale: run `python -m oomkit.manpages` and commit man/"


def test_every_subcommand_option_and_key_is_in_the_pages():
    page1, page5 = manpages.pages()["oomkit.1"], manpages.pages()["oomkit.toml.5"]
    for name, cmd in main.commands.items():
        assert f".SS oomkit {manpages.esc(name)} " in page1
        for p in cmd.params:
            if isinstance(p, click.Option):
                assert all(manpages.esc(o) in page1 for o in p.opts), (name, p.opts)
    for spec in (DaemonSpec, AttachSpec):
        for f in msgspec.structs.fields(spec):
            assert f"\\fB{manpages.esc(f.name)}\\fR = " in page5
    assert '\\fBhandler_deadline\\fR = "50ms"\nWall time' in page5 and "Bounds: 1ms to 60s." in page5


def test_a_key_without_a_line_is_an_error():
    class Spec(msgspec.Struct):
        new_key: int = 1

    with pytest.raises(KeyError, match="new_key"):
        manpages._keys(Spec, {}, "[daemon]")


def test_troff_escapes():
    assert manpages.esc(".x") == "\\&.x" and manpages.esc("'x") == "\\&'x"
    assert manpages.esc("a\\b --c") == "a\\eb \\-\\-c"


@pytest.mark.skipif(shutil.which("man") is None, reason="man (man-db) is not installed")
@pytest.mark.parametrize("name", ["oomkit.1", "oomkit.toml.5"])
def test_man_renders_the_page_without_warnings(name):
    r = subprocess.run(["man", "--warnings", "-l", str(MAN / name)], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"})
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert ("COMMANDS" if name == "oomkit.1" else "metrics_textfile") in r.stdout
