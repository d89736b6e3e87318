"""Log lines are safe to print whatever they repeat: no terminal escapes, bounded length."""

from __future__ import annotations

import json
import subprocess
import sys

from chequered import log

SCRIPT = """
import sys
from chequered import log
log.configure("info", json={json})
log.get("t").info("command_rejected", op=sys.argv[1], cmd_id=sys.argv[2])
"""


def _run(json_lines: bool, op: str, cmd_id: str) -> str:
    ran = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(json=json_lines), op, cmd_id],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return ran.stderr


def test_terminal_escapes_from_a_controller_are_printed_escaped() -> None:
    hostile = "\x1b[2J\x1b]0;owned\x07red\x1b[31m\nfake_event level=error"
    out = _run(False, hostile, "id-1")
    assert "\x1b" not in out and "\x07" not in out
    assert out.count("\n") == 1  # one event, one line
    assert "\\x1b[2J" in out and "\\n" in out


def test_a_huge_value_is_cut_and_its_length_given() -> None:
    out = _run(True, "x" * 4202, "id-2")
    line = json.loads(out)
    assert line["op"].startswith("x" * log.MAX_VALUE_CHARS)
    assert line["op"].endswith("(4202 characters)")
    assert len(line["op"]) < log.MAX_VALUE_CHARS + 40
    assert line["cmd_id"] == "id-2"


def test_sanitise_leaves_plain_text_alone() -> None:
    assert log.sanitise("alms-2013-monterey-race: ok") == "alms-2013-monterey-race: ok"
    assert log.sanitise("tab\there", limit=100) == "tab\\there"
