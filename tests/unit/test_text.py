"""Issue 10 item 1: task names, argv and cgroup names are hostile input.
``oomkit.text`` makes them safe for a record (valid UTF-8) and for a terminal
(no control character, no ANSI escape, no rich markup), and the readable
reports of ``simulate`` and ``replay`` use it."""

from __future__ import annotations

import io
import json
import logging
import textwrap

import msgspec
from click.testing import CliRunner
from rich.console import Console

from oomkit.cli import main
from oomkit.engine.chain import Engine, EngineSettings
from oomkit.report import print_oom
from oomkit.schema import OOMRecord
from oomkit.text import TerminalFormatter, for_markup, for_record, for_terminal, record_safe
from oomtest_helpers import FuncPolicy, kill_named, make_sim

# What the kernel gives for bytes that are not UTF-8, read with surrogateescape.
LATIN1_NAME = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
ANSI = "\x1b[31mred\x1b[0m\x1b]0;title\x07"
MARKUP = "[/]"


def test_for_record_turns_undecodable_bytes_into_backslash_x():
    assert for_record(LATIN1_NAME) == "caf\\xe9 \\xff"
    for_record(LATIN1_NAME).encode("utf-8")                     # valid UTF-8 now
    assert msgspec.json.decode(msgspec.json.encode({"n": for_record(LATIN1_NAME)}))["n"] == "caf\\xe9 \\xff"


def test_for_record_keeps_valid_text_and_escapes_other_lone_surrogates():
    assert for_record("größe [/] \x1b") == "größe [/] \x1b"       # JSON escapes controls itself
    assert for_record("a\ud800b") == "a\\ud800b"
    assert for_record("") == ""


def test_the_surrogateescape_form_still_names_the_file():
    # The internal form round-trips to bytes; only the output form is escaped.
    assert LATIN1_NAME.encode("utf-8", "surrogateescape") == b"caf\xe9 \xff"


def test_for_terminal_escapes_controls_ansi_and_line_breaks():
    assert for_terminal(ANSI) == "\\x1b[31mred\\x1b[0m\\x1b]0;title\\x07"
    assert for_terminal("a\nb\rc\td\x7f") == "a\\x0ab\\x0dc\\x09d\\x7f"
    assert for_terminal("\x9b31m") == "\\x9b31m"                   # C1 CSI
    assert for_terminal("abc\u202edcba") == "abc\\u202edcba"       # bidi override
    assert for_terminal("x\u2028y") == "x\\u2028y"
    assert for_terminal(LATIN1_NAME) == "caf\\xe9 \\xff"


def test_for_terminal_keeps_printable_text():
    assert for_terminal("postgres: writer [/] größe 数据库 🙂") == "postgres: writer [/] größe 数据库 🙂"


def test_for_markup_escapes_rich_markup():
    assert for_markup("[/]") == "\\[/]"
    assert for_markup("[bold]x") == "\\[bold]x"
    assert for_markup("ends\\") == "ends\\\\"      # would escape the tag that follows


HOSTILE = textwrap.dedent("""
    [machine]
    memory = "1G"

    [[cgroup]]
    path = "/b[bold]\\u001b[2J"
    limit = "100M"

    [[task]]
    name = "[/]"
    cgroup = "/b[bold]\\u001b[2J"
    rss = "60M"

    [[task]]
    name = "\\u001b[31mevil\\u001b[0m"
    cgroup = "/b[bold]\\u001b[2J"
    rss = "30M"

    [[task]]
    name = "end\\\\"
    cgroup = "/b[bold]\\u001b[2J"
    rss = "1M"

    [[attach]]
    cgroup = "/"
    policy = "largest-task"

    [[event]]
    at = 1.0
    task = "[/]"
    alloc = "20M"
""")


def test_simulate_reports_hostile_names_escaped(tmp_path):
    f = tmp_path / "hostile.toml"
    f.write_text(HOSTILE)
    result = CliRunner().invoke(main, ["simulate", str(f)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    assert "killed pid 100 ([/]) in /b[bold]\\x1b[2J" in result.output
    assert "\\x1b[31mevil\\x1b[0m" in result.output


def test_simulate_json_keeps_the_names_as_given(tmp_path):
    f = tmp_path / "hostile.toml"
    f.write_text(HOSTILE)
    result = CliRunner().invoke(main, ["simulate", "--json", str(f)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["killed"] == ["[/]"]


def _recorded(tmp_path, name: str, cgroup: str):
    sim = make_sim(cgroups=[{"path": cgroup, "limit": "100M"}],
                   tasks=[{"name": name, "cgroup": cgroup, "rss": "60M"},
                          {"name": "small", "cgroup": cgroup, "rss": "30M"}])
    engine = Engine(sim.backend, EngineSettings(snapshot=True))    # as the daemon's
    engine.attach(cgroup, FuncPolicy(kill_named(name)))
    record = engine.handle(sim.machine.check(sim._by_name[name], 20 << 20))
    log = tmp_path / "events.jsonl"
    log.write_bytes(msgspec.json.encode(record) + b"\n")
    return log


def test_replay_reports_hostile_names_escaped(tmp_path):
    log = _recorded(tmp_path, "[/]\x1b[2J", "/c[bold]")
    result = CliRunner().invoke(main, ["replay", str(log), "--attach", "/c[bold]=largest-task"])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    assert "([/]\\x1b[2J) in /c[bold]" in result.output


def test_the_report_prints_undecodable_names_on_a_strict_utf8_terminal():
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    record = {"t": 0.0, "level": "memcg", "memcg": "/" + LATIN1_NAME, "trigger": LATIN1_NAME,
              "requested": 1, "resolved_by": "policy", "handlers": [], "limits": [],
              "killed": [{"pid": 1, "name": LATIN1_NAME, "cgroup": "/" + LATIN1_NAME, "by": "kernel"}]}
    print_oom(msgspec.convert(record, OOMRecord), "t", Console(file=out, highlight=False, width=200))
    out.flush()
    text = out.buffer.getvalue().decode("utf-8")
    assert "killed pid 1 (caf\\xe9 \\xff) in /caf\\xe9 \\xff" in text


def test_record_safe_reaches_keys_and_nested_values():
    assert record_safe({LATIN1_NAME: [LATIN1_NAME, 1, None, (LATIN1_NAME,)]}) == \
        {"caf\\xe9 \\xff": ["caf\\xe9 \\xff", 1, None, ["caf\\xe9 \\xff"]]}


def test_log_lines_are_escaped_and_stay_one_line():
    formatter = TerminalFormatter("%(message)s")
    record = logging.LogRecord("oomkit", logging.WARNING, __file__, 1,
                               "oomkit: killed pid %d (%s)", (7, "x\noomkit: forged " + ANSI), None)
    assert formatter.format(record) == \
        "oomkit: killed pid 7 (x\\x0aoomkit: forged \\x1b[31mred\\x1b[0m\\x1b]0;title\\x07)"


def test_an_error_line_escapes_a_hostile_file_name(tmp_path):
    name = tmp_path / "\x1b[31mx\ny.toml"
    result = CliRunner().invoke(main, ["check", str(name)])
    assert result.exit_code == 2
    assert "\x1b" not in result.output and result.output.count("\n") == 1
    assert "\\x1b[31mx\\x0ay.toml" in result.output


POLICY = '''
from oomkit import OOMPolicy, Verdict

class Odd(OOMPolicy):
    name = "odd"
    def handle_out_of_memory(self, oc, k):
        for t in oc.tasks.in_cgroup(oc.memcg):
            if k.kill_task(t, "caf\\udce9") > 0:
                return Verdict.HANDLED
        return Verdict.PASS
'''


def test_simulate_json_writes_valid_utf8_when_a_string_is_not(tmp_path):
    (tmp_path / "odd.py").write_text(POLICY)
    scenario = HOSTILE.replace('policy = "largest-task"', 'policy = "odd.py:Odd"')
    (tmp_path / "s.toml").write_text(scenario)
    result = CliRunner().invoke(main, ["simulate", "--json", str(tmp_path / "s.toml")])
    assert result.exit_code == 0, result.output
    actions = json.loads(result.output)["ooms"][0]["handlers"][0]["actions"]
    assert actions[0]["reason"] == "caf\\xe9"
    result = CliRunner().invoke(main, ["simulate", str(tmp_path / "s.toml")])
    assert result.exit_code == 0, result.output


def test_journal_priorities_and_stream_detection(tmp_path):
    import logging
    import os

    from oomkit.text import JournalFormatter, stderr_is_journal

    f = JournalFormatter("%(message)s")
    rec = logging.LogRecord("oomkit", logging.WARNING, __file__, 1, "oomkit: killed pid %d (%s)", (7, "a\nb"),
                            None)
    assert f.format(rec) == "<4>oomkit: killed pid 7 (a\\x0ab)"      # one line: the name cannot forge one
    rec.levelno = logging.DEBUG
    assert f.format(rec).startswith("<7>")
    rec.levelno = logging.ERROR
    assert f.format(rec).startswith("<3>")
    with open(tmp_path / "stream", "w") as out:
        st = os.fstat(out.fileno())
        assert stderr_is_journal(f"{st.st_dev}:{st.st_ino}", out.fileno())
        assert not stderr_is_journal(f"{st.st_dev}:{st.st_ino + 1}", out.fileno())
    assert not stderr_is_journal(None) and not stderr_is_journal("x:y")
