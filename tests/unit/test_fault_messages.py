"""What a failed node-compressed backup stream says it was (fault rows 10-12): the zstd hint
only when the node has no zstd, a killed stream said as cut short."""

from __future__ import annotations

from garage_migrate.backup.nodezstd import _why
from garage_migrate.errors import CommandError


def test_a_missing_zstd_is_named_only_when_it_is_missing():
    assert _why(CommandError("x", exit_status=127, stderr="sh: 1: zstd: not found")) == "the node has no zstd"
    assert _why(CommandError("x", exit_status=2, stderr="sh: 1: zstd: not found")) == "the node has no zstd"


def test_a_killed_stream_is_said_to_be_cut_short():
    assert _why(CommandError("x", signal="KILL")) == "killed (SIGKILL): the stream was cut short"
    assert _why(CommandError("x", exit_status=137)) == "killed (exit 137): the stream was cut short"
    assert _why(CommandError("x", exit_status=2, stderr="tar: meta: Cannot open")) == "exit 2"
