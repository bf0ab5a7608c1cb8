"""Names and paths reach the node as literal arguments, never as shell (issue 12 §5).

sshd hands a command to the login shell as one string (``$SHELL -c <command>``), so every
word :mod:`garage_migrate.commands` builds must come out of that shell's parsing unchanged,
whatever it holds: quotes, ``$(...)``, backticks, ``;``, globs, spaces, tabs, unicode. Property
test: for arbitrary paths and words (hypothesis), the real builders' rendered command, parsed
by a real ``sh`` (and ``bash`` when present) with ``set --``, yields exactly the argv the command
value holds; and nothing it contains ran (a canary command would have left a file).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from garage_migrate import commands as C
from garage_migrate.commands import NodeContext, ServiceControl

SHELLS = [s for s in ("/bin/sh", shutil.which("bash")) if s]
# everything but NUL and newline (refused by RemoteCommand and the builders), heavy on what a shell reads
SPECIAL = list(" \t'\"`$\\;&|<>()[]{}*?!~#%^=,:@+-") + ["$(touch CANARY)", "`touch CANARY`", "';touch CANARY;'"]
chars = st.characters(blacklist_characters="\0\n", blacklist_categories=("Cs",))
segment = st.lists(st.one_of(st.sampled_from(SPECIAL), st.text(chars, min_size=1, max_size=6)),
                   min_size=1, max_size=5).map("".join).filter(lambda s: s not in (".", "..") and "/" not in s)
paths = st.lists(segment, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
words = st.lists(st.one_of(st.sampled_from(SPECIAL), st.text(chars, min_size=1, max_size=8)), min_size=1,
                 max_size=4).map("".join)


def parsed_by(shell: str, rendered: str, cwd: Path) -> list[str]:
    """The argv ``shell -c`` makes of ``rendered`` (as it would execute it), without running it."""
    script = f"set -- {rendered}\nprintf '%s\\0' \"$@\""
    res = subprocess.run([shell, "-c", script], capture_output=True, cwd=cwd, timeout=30,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})
    assert res.returncode == 0, res.stderr
    return res.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1]


def built(path: str, other: str, word: str, sudo: bool) -> list[C.RemoteCommand]:
    """Commands of the real builders over ``path`` (and ``other``, ``word``)."""
    ctx = NodeContext(name="n1", binary_path=path, config_path=other, sudo=sudo,
                      service=ServiceControl(kind="custom", start=(path, word), stop=(path, "stop"),
                                             status=(path, "status"), signal=(path, word)))
    return [
        C.cat(path, sudo=sudo), C.sha256sum(path), C.stat(path), C.exists(path), C.mkdir_p(path),
        C.remove_file(path), C.rename(path, other), C.symlink(path, other), C.du_bytes(path),
        C.tar_archive(path, other, timeout=60, sudo=sudo), C.zstd_test(other), C.list_files(path),
        C.lock_record_take("".join(c for c in word if " " <= c <= "~") or "rec", path), C.readlink_f(path),
        C.garage(ctx, "status"), C.service_start(ctx), C.service_signal(ctx, "INT"),
    ]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("literal")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(path=paths, other=paths, word=words, sudo=st.booleans())
def test_every_word_reaches_the_node_literally(scratch, path, other, word, sudo):
    cmds = built(path, other, word, sudo)
    # one shell run per example: the commands joined by a separator word no builder makes
    sep = "--GM-SEP--"
    joined = f" {sep} ".join(c.render() for c in cmds)
    want = [w for c in cmds for w in (*c.words(), sep)][:-1]
    for shell in SHELLS:
        assert parsed_by(shell, joined, scratch) == want, shell
    assert not list(scratch.iterdir()), "a word was executed as shell"


def test_the_property_can_fail_for_an_unquoted_join(scratch):
    # the check is not vacuous: the same comparison catches a join without quoting
    cmd = C.cat("/tmp/a b$(touch CANARY)")
    naive = " ".join(cmd.words())
    assert parsed_by("/bin/sh", naive, scratch) != list(cmd.words())
    (scratch / "CANARY").unlink()  # and it ran the substitution
