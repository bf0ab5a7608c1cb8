"""The SSH runner against a real lab: real sshd, host-key checks, timeouts, signals, streams, SFTP.

One 0.7.3 lab serves the whole module: these tests never change the cluster (they only write
under the lab's ``tmp/``), and a lab takes seconds to come up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import os
import re
import tarfile
import time
from pathlib import Path

import asyncssh
import pytest

from garage_migrate import commands as C
from garage_migrate.commands import RemoteCommand
from garage_migrate.errors import (
    CommandError,
    CommandRefused,
    CommandTimeout,
    HostKeyError,
    TransportError,
    is_transient,
)
from garage_migrate.inventory import Inventory, load_inventory
from garage_migrate.ssh import NodeShell, Result, SshPool
from tests.conftest import run

# Test-only helpers allowed on top of the allow-list; migration code never gets these.
TEST_EXTRAS = {"sh", "bash", "pgrep"}


@pytest.fixture(scope="module")
def lab(module_lab):
    lab = module_lab(version="0.7.3", timeout=60)
    (lab.dir / "tmp").mkdir()
    return lab


@pytest.fixture(scope="module")
def inv(lab) -> Inventory:
    # the inventory exactly as the lab wrote it: the loader must take the lab's format as is
    return load_inventory(lab.dir / "inventory.yaml")


def pool_for(inv: Inventory, **kw) -> SshPool:
    return SshPool.from_inventory(inv, extra_executables=TEST_EXTRAS, **kw)


def sh(script: str, timeout: float | None = 20) -> RemoteCommand:
    return RemoteCommand(("sh", "-c", script), timeout=timeout)


def with_target(inv: Inventory, name: str, **changes) -> SshPool:
    """A pool with one node's target changed (known_hosts, max_channels, host ...)."""
    t = inv.node(name).ssh
    return SshPool([dataclasses.replace(t, **changes)], extra_executables=TEST_EXTRAS)


# ---------------------------------------------------------------------------- context and reuse


def test_each_session_lands_in_its_nodes_context_over_one_reused_connection(lab, inv):
    async def go():
        async with pool_for(inv) as pool:
            out = {}
            for node in inv.resolved_nodes():
                shell = pool.shell(node.name)
                assert isinstance(shell, NodeShell)
                first = await shell.run(sh('echo "$GARAGE_LAB_NODE"'))
                again = await shell.run(sh('echo "$GARAGE_LAB_NODE $SSH_CONNECTION"'))
                out[node.name] = (first.stdout, again.stdout, pool.connections_opened(node.name))
            return out

    out = run(go())
    assert set(out) == {n["name"] for n in lab.nodes} and len(out) == 6
    for name, (first, again, opened) in out.items():
        assert first == f"{name}\n"
        assert again.split()[0] == name
        assert again.split()[3] == inv.node(name).host, "the session reached the node's own address"
        assert opened == 1, "the second command reused the connection"


def test_garage_status_through_the_runner(inv):
    node = inv.resolved_nodes()[0]

    async def go():
        async with SshPool.from_inventory(inv) as pool:  # no test extras: builders only
            return await pool.shell(node.name).run(C.garage(node.ctx, "status"))

    res = run(go())
    assert res.exit_status == 0 and res.returncode == 0 and res.signal is None
    assert "==== HEALTHY NODES ====" in res.stdout
    for n in inv.resolved_nodes():
        assert n.name in res.stdout


def test_a_broken_connection_is_replaced(inv):
    async def go():
        async with pool_for(inv) as pool:
            shell = pool.shell("node-a1")
            await shell.run(sh("true"))
            slot_conn = pool._slot(pool.target("node-a1")).conn
            slot_conn.close()
            await slot_conn.wait_closed()
            res = await shell.run(sh("echo back"))
            return res.stdout, pool.connections_opened("node-a1")

    assert run(go()) == ("back\n", 2)


def test_the_runner_refuses_commands_off_the_allow_list_before_connecting(inv):
    async def go():
        async with SshPool.from_inventory(inv) as pool:
            with pytest.raises(CommandRefused, match="'sh' is not on the allow-list on node-a1"):
                await pool.shell("node-a1").run(sh("true"))
            return pool.connections_opened("node-a1")

    assert run(go()) == 0


# ---------------------------------------------------------------------------- host keys


def _lab_host_fingerprint(lab) -> str:
    return asyncssh.read_public_key(str(lab.dir / "ssh" / "host_ed25519.pub")).get_fingerprint()


def test_an_unknown_host_key_is_refused_with_the_fix(lab, inv, tmp_path):
    node = inv.node("node-b1")
    kh = tmp_path / "known_hosts"
    # the other nodes' lines, not this one's: a plausible file that lacks the key
    kh.write_text("".join(line + "\n" for line in (lab.dir / "known_hosts").read_text().splitlines()
                          if not line.startswith(f"[{node.host}]:")))

    async def go():
        async with with_target(inv, "node-b1", known_hosts=kh) as pool:
            await pool.shell("node-b1").run(sh("true"))

    with pytest.raises(HostKeyError) as info:
        run(go())
    exc = info.value
    assert exc.code == "HOST_KEY_UNKNOWN" and exc.node == "node-b1"
    assert not is_transient(exc)
    msg = str(exc)
    assert f"ssh-keyscan -p 2222 {node.host} >> {kh}" in msg
    assert _lab_host_fingerprint(lab) in msg, "the offered fingerprint is shown, to be verified"
    assert "Verify the fingerprint" in msg


def test_a_changed_host_key_is_refused_and_said_so(lab, inv, tmp_path):
    node = inv.node("node-c2")
    wrong = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()[:2]
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[{node.host}]:2222 {wrong[0]} {wrong[1]}\n")

    async def go():
        async with with_target(inv, "node-c2", known_hosts=kh) as pool:
            await pool.shell("node-c2").run(sh("true"))

    with pytest.raises(HostKeyError) as info:
        run(go())
    exc = info.value
    assert exc.code == "HOST_KEY_CHANGED"
    assert not is_transient(exc)
    assert "HOST KEY CHANGED" in str(exc)
    assert f"ssh-keygen -R '[{node.host}]:2222' -f {kh}" in str(exc)
    assert _lab_host_fingerprint(lab) in str(exc)


def test_a_missing_known_hosts_file_is_refused(inv, tmp_path):
    async def go():
        async with with_target(inv, "node-a1", known_hosts=tmp_path / "nope") as pool:
            await pool.shell("node-a1").run(sh("true"))

    with pytest.raises(HostKeyError, match="does not exist; host keys are always verified"):
        run(go())


def test_an_unreachable_node_is_a_transient_transport_error(lab, inv):
    nobody = f"{lab.spec.subnet}.250"  # nothing listens there

    async def go():
        async with with_target(inv, "node-a1", host=nobody) as pool:
            await pool.shell("node-a1").run(sh("true"))

    with pytest.raises(TransportError) as info:
        run(go())
    assert type(info.value) is TransportError
    assert info.value.code == "NODE_UNREACHABLE" and is_transient(info.value)
    assert f"cannot connect to {nobody}:2222" in str(info.value)


# ---------------------------------------------------------------------------- concurrency


def test_concurrent_commands_share_one_connection_bounded_by_the_semaphore(lab, inv):
    """12 commands, 3 channels: never more than 3 run on the node at once, all over one connection."""
    box = lab.dir / "tmp" / "concurrency"
    box.mkdir()
    # each command registers itself, waits, counts who else is registered, and leaves
    script = (f'f=$(mktemp -p {box}); sleep 0.4; n=$(ls {box} | wc -l); rm -f "$f"; '
              'echo "$n ${SSH_CONNECTION% * *}"')

    async def go():
        async with with_target(inv, "node-a2", max_channels=3) as pool:
            shell = pool.shell("node-a2")
            t0 = time.monotonic()
            results = await asyncio.gather(*(shell.run(sh(script)) for _ in range(12)))
            return results, time.monotonic() - t0, pool.connections_opened("node-a2")

    results, elapsed, opened = run(go())
    counts = [int(r.stdout.split()[0]) for r in results]
    client_ends = {r.stdout.split(maxsplit=1)[1] for r in results}
    assert max(counts) <= 3, counts
    assert max(counts) >= 2, f"commands did run concurrently: {counts}"
    assert elapsed >= 4 * 0.4, "12 commands of 0.4 s through 3 channels take at least 4 rounds"
    assert opened == 1 and len(client_ends) == 1, client_ends


def test_many_concurrent_commands_with_the_default_bound(inv):
    async def go():
        async with pool_for(inv) as pool:
            shell = pool.shell("node-b2")
            res = await asyncio.gather(*(shell.run(sh(f"echo {i}")) for i in range(60)))
            return [r.stdout.strip() for r in res], pool.connections_opened("node-b2")

    out, opened = run(go())
    assert out == [str(i) for i in range(60)]
    assert opened == 1


# ---------------------------------------------------------------------------- timeouts


def _lingering(marker: str) -> list[str]:
    # the lab's nodes are local: /proc shows everything the node-side command left behind
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmd:
                found.append(f"{entry.name}: {cmd}")
    return found


@pytest.mark.parametrize(("script", "expect_signal", "max_seconds"), [
    ("sleep {marker}", None, 4.0),  # obeys SIGTERM: timeout exits 124
    ('trap "" TERM; sleep {marker}', "KILL", 10.0),  # ignores it: SIGKILL after --kill-after=5
], ids=["term", "kill-after"])
def test_a_command_over_its_timeout_is_killed_on_the_node(inv, script, expect_signal, max_seconds):
    marker = f"31.{os.getpid()}{int(time.time() * 1000) % 100000}"  # a unique sleep duration

    async def go():
        async with pool_for(inv) as pool:
            shell = pool.shell("node-a1")
            t0 = time.monotonic()
            with pytest.raises(CommandTimeout) as info:
                await shell.run(sh(script.format(marker=marker), timeout=1))
            elapsed = time.monotonic() - t0
            # the brackets keep pgrep from matching its own command line
            left = await shell.run(RemoteCommand(("pgrep", "-f", f"slee[p] {marker}"), timeout=10), check=False)
            return info.value, elapsed, left

    exc, elapsed, left = run(go())
    assert exc.code == "COMMAND_TIMEOUT" and is_transient(exc)
    assert "exceeded its 1s timeout and was killed on the node" in str(exc)
    assert exc.signal == expect_signal
    assert exc.exit_status == (None if expect_signal else 124)
    assert 1.0 <= elapsed < max_seconds
    assert left.exit_status == 1 and left.stdout == "", f"still running on the node: {left.stdout}"
    assert _lingering(f"sleep {marker}") == []


# ---------------------------------------------------------------------------- exit status and signals


def test_exit_status_is_reported_and_checked(inv):
    async def go():
        async with pool_for(inv) as pool:
            shell = pool.shell("node-a1")
            plain = await shell.run(sh("echo out; echo err >&2; exit 3"), check=False)
            with pytest.raises(CommandError) as info:
                await shell.run(sh("echo 'Error: it broke' >&2; exit 3"))
            return plain, info.value

    plain, exc = run(go())
    assert plain == Result(stdout="out\n", stderr="err\n", exit_status=3, signal=None, returncode=3)
    assert not plain.ok
    assert type(exc) is CommandError and exc.code == "COMMAND_FAILED" and not is_transient(exc)
    assert exc.exit_status == 3 and exc.signal is None and exc.node == "node-a1"
    assert exc.command == sh("echo 'Error: it broke' >&2; exit 3").render()
    assert str(exc).endswith("exited with status 3: Error: it broke")
    assert exc.stderr_tail == "Error: it broke"


@pytest.mark.parametrize("timeout", [None, 10], ids=["bare", "under-timeout"])
def test_death_by_signal_is_a_negative_returncode(inv, timeout):
    async def go():
        async with pool_for(inv) as pool:
            shell = pool.shell("node-b1")
            res = await shell.run(sh("echo dying >&2; kill -ABRT $$", timeout=timeout), check=False)
            with pytest.raises(CommandError) as info:
                await shell.run(sh("kill -ABRT $$", timeout=timeout))
            return res, info.value

    res, exc = run(go())
    assert res.signal == "ABRT" and res.returncode == -6 and res.exit_status is None
    assert res.stderr == "dying\n"
    assert type(exc) is CommandError, "a signal within the deadline is a failure, not a timeout"
    assert exc.signal == "ABRT" and exc.returncode == -6
    assert "died of signal ABRT" in str(exc)


def test_stdin_is_fed_and_otherwise_closed(inv):
    async def go():
        async with SshPool.from_inventory(inv) as pool:
            shell = pool.shell("node-c1")
            fed = await shell.run(RemoteCommand(("sha256sum",), timeout=10, stdin=b"hello garage\n"))
            t0 = time.monotonic()
            empty = await shell.run(RemoteCommand(("cat",), timeout=10))  # would wait forever on an open stdin
            return fed.stdout, empty.stdout, time.monotonic() - t0

    fed, empty, elapsed = run(go())
    assert fed.split()[0] == hashlib.sha256(b"hello garage\n").hexdigest()
    assert empty == "" and elapsed < 5


# ---------------------------------------------------------------------------- binary streams


def test_binary_stream_is_byte_exact(inv):
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(data)

    async def go():
        async with pool_for(inv) as pool:
            return await pool.shell("node-c1").stream(
                RemoteCommand(("bash", "-c", "head -c 3000000 /dev/urandom | tee >(sha256sum >&2)"), timeout=60),
                sink, chunk=65536)

    res = run(go())
    data = b"".join(chunks)
    assert res.exit_status == 0 and res.stdout == ""
    assert res.streamed == len(data) == 3_000_000
    assert hashlib.sha256(data).hexdigest() == res.stderr.split()[0], "what the node hashed is what we got"
    assert max(len(c) for c in chunks) <= 65536


def test_a_stream_that_fails_after_output_raises_after_eof(inv):
    got = bytearray()

    async def go():
        async with pool_for(inv) as pool:
            await pool.shell("node-c1").stream(sh("head -c 100000 /dev/zero; echo 'tar: gone' >&2; exit 2"), got.extend)

    with pytest.raises(CommandError) as info:
        run(go())
    assert len(got) == 100000, "the partial output was delivered before the failure was known"
    assert info.value.exit_status == 2 and info.value.stderr_tail == "tar: gone"


def test_a_sink_error_propagates_unchanged(inv):
    def sink(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    async def go():
        async with pool_for(inv) as pool:
            shell = pool.shell("node-a2")
            with pytest.raises(OSError, match="No space left") as info:
                await shell.stream(sh("head -c 1000000 /dev/zero"), sink)
            after = await shell.run(sh("echo still fine"))
            return info.value, after.stdout, pool.connections_opened("node-a2")

    exc, after, opened = run(go())
    assert not isinstance(exc, TransportError), "a local failure is not a transport fault"
    assert after == "still fine\n" and opened == 1


def test_tar_stream_of_a_metadata_dir(lab, inv):
    node = inv.node("node-b2")
    meta = str(lab.node_dir("node-b2") / "meta")
    buf = bytearray()

    async def go():
        async with SshPool.from_inventory(inv) as pool:
            return await pool.shell(node.name).stream(C.tar_stream(meta, timeout=120), buf.extend)

    res = run(go())
    assert res.ok
    with tarfile.open(fileobj=io.BytesIO(bytes(buf)), mode="r:") as tar:
        names = tar.getnames()
        key = tar.extractfile("meta/node_key").read()
    assert "meta/node_key.pub" in names and "meta/cluster_layout" in names
    assert key == (lab.node_dir("node-b2") / "meta" / "node_key").read_bytes()


# ---------------------------------------------------------------------------- SFTP


def test_sftp_upload_is_atomic_and_keeps_the_mode(lab, inv, tmp_path):
    local = tmp_path / "garage-v0.8.7"
    payload = os.urandom(2_000_000)
    local.write_bytes(payload)
    local.chmod(0o755)
    remote = str(lab.dir / "tmp" / "garage-v0.8.7")

    async def go():
        async with SshPool.from_inventory(inv) as pool:
            shell = pool.shell("node-a1")
            await shell.put_file(local, remote)
            digest = await shell.run(C.sha256sum(remote))
            mode = await shell.run(C.stat(remote))
            return digest.stdout, mode.stdout

    digest, mode = run(go())
    assert digest.split()[0] == hashlib.sha256(payload).hexdigest()
    assert mode.split()[:2] == ["2000000", "755"]
    assert not Path(remote + ".part").exists()


def test_sftp_upload_into_a_missing_directory_fails_clearly(lab, inv, tmp_path):
    local = tmp_path / "f"
    local.write_bytes(b"x")

    async def go():
        async with SshPool.from_inventory(inv) as pool:
            await pool.shell("node-a1").put_file(local, str(lab.dir / "tmp" / "no" / "such" / "f"))

    with pytest.raises(CommandError) as info:
        run(go())
    assert not is_transient(info.value)
    assert re.search(r"sftp put .* failed: No such file", str(info.value))
