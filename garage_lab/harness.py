"""Bring a lab cluster up and down: node directories, daemons, one real sshd, one real Prometheus.

``Lab.up(spec)`` creates ``spec.dir`` with:

- ``dist/garage-v<version>``: one launcher per simulated Garage version (the "binaries");
- ``nodes/<name>/``: per node ``etc/garage.toml``, ``usr/local/bin/garage`` (a symlink to a
  launcher: swapping it is a binary swap), ``meta/``, ``data/``, ``log/``, ``run/``, and the
  lab-only ``node.json``, ``lab.json`` (knobs) and ``faults.json``;
- ``ssh/``: the sshd config, its host key, the authorized client key and an empty HOME;
- ``prometheus/``: its config and TSDB;
- ``inventory.yaml``, ``known_hosts``, ``id_ed25519``: what an orchestrator needs to reach the
  cluster exactly as it would reach a real one.

Every node listens on its own loopback address with the conventional ports (S3 3900, RPC 3901,
web 3902, admin 3903). ``Lab.down()`` kills everything the lab started, by PID, and sweeps any
process whose command line points into the lab directory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import service, shims
from .garage import cluster
from .garage.knobs import FAULT_KINDS, Faults, save_faults
from .garage.personality import PERSONALITIES
from .garage.store import COUNTER_TREES, INSERT_QUEUE_TREE, Store, write_padding

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SSHD = "/usr/sbin/sshd"
ZONE_LETTERS = "abcdefghijklmnopqrstuvwxyz"
PORT_S3, PORT_RPC, PORT_WEB, PORT_ADMIN = 3900, 3901, 3902, 3903
SSHD_MAX_LISTEN = 16  # OpenSSH's MAX_LISTEN_SOCKS


class LabError(Exception):
    """The lab could not be brought up, inspected or torn down."""


def parse_size(text: str) -> int:
    """``64MiB`` / ``2GiB`` / ``0`` to bytes."""
    units = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip()
    i = len(t)
    while i and not t[i - 1].isdigit():
        i -= 1
    return int(float(t[:i]) * units[t[i:].strip()])


@dataclass
class LabSpec:
    """What ``garage-lab up`` builds."""

    dir: str
    zones: int = 3
    per_zone: int = 2
    version: str = "0.7.3"
    meta_size: int = 0
    subnet: str = ""  # "127.B.C"; empty: pick a free one
    ssh_port: int = 2222
    seed: str = "garage-lab"
    buckets: int = 8
    objects_per_bucket: int = 24
    unsynced: int = 4  # objects missing from one replica, so `repair tables` has work to do
    metrics_token: str | None = None  # None: generate one; "": no token
    admin_token: str | None = None
    prometheus_port: int = 9090
    knobs: dict = field(default_factory=dict)


def _free_subnet() -> str:
    for c in range(10, 250):
        subnet = f"127.42.{c}"
        s = socket.socket()
        try:
            s.bind((f"{subnet}.1", PORT_RPC))
        except OSError:
            continue
        finally:
            s.close()
        # also reserve it against a concurrent `up` in the same directory tree
        return subnet
    raise LabError("no free 127.42.x.0/24 subnet for a lab")


def _launcher(lab: Path, version: str) -> str:
    return (
        "#!/bin/sh\n"
        f"# garage-lab: simulated Garage v{version} (stdlib Python; see garage_lab/garage)\n"
        'if [ -n "$GARAGE_LAB_NODE" ] && [ -z "$GARAGE_CONFIG_FILE" ]; then\n'
        f'  GARAGE_LAB_DEFAULT_CONFIG="{lab}/nodes/$GARAGE_LAB_NODE/etc/garage.toml"; export GARAGE_LAB_DEFAULT_CONFIG\n'
        "fi\n"
        f'GARAGE_LAB_DIR="{lab}"; export GARAGE_LAB_DIR\n'
        f'PYTHONPATH="{PROJECT_ROOT}" exec "{sys.executable}" -S -m garage_lab.garage {version} "$@"\n'
    )


def _service_script(lab: Path) -> str:
    return (
        "#!/bin/sh\n"
        "# garage-lab: service control for the node this session landed on (see garage_lab/service.py)\n"
        f'GARAGE_LAB_DIR="{lab}"; export GARAGE_LAB_DIR\n'
        f'PYTHONPATH="{PROJECT_ROOT}" exec "{sys.executable}" -S -m garage_lab.service "$@"\n'
    )


def _write_exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def _garage_toml(spec: LabSpec, node: dict, peers: list[str], rpc_secret: str) -> str:
    nd = Path(spec.dir) / "nodes" / node["name"]
    addr = node["addr"]
    lines = [
        f'metadata_dir = "{nd / "meta"}"',
        f'data_dir = "{nd / "data"}"',
        "",
        'replication_mode = "3"',
        "",
        f'rpc_bind_addr = "{addr}:{PORT_RPC}"',
        f'rpc_public_addr = "{addr}:{PORT_RPC}"',
        f'rpc_secret = "{rpc_secret}"',
        "bootstrap_peers = [",
        *[f'  "{p}",' for p in peers],
        "]",
        "",
        "[s3_api]",
        's3_region = "garage"',
        f'api_bind_addr = "{addr}:{PORT_S3}"',
        'root_domain = ".s3.garage.localhost"',
        "",
        "[s3_web]",
        f'bind_addr = "{addr}:{PORT_WEB}"',
        'root_domain = ".web.garage.localhost"',
        "",
        "[admin]",
        f'api_bind_addr = "{addr}:{PORT_ADMIN}"',
    ]
    if spec.metrics_token:
        lines.append(f'metrics_token = "{spec.metrics_token}"')
    if spec.admin_token:
        lines.append(f'admin_token = "{spec.admin_token}"')
    return "\n".join(lines) + "\n"


class Lab:
    """A lab cluster rooted at ``dir``; its facts live in ``dir/lab.json``."""

    def __init__(self, dir: str | Path):
        self.dir = Path(dir).resolve()
        try:
            self.info = json.loads((self.dir / "lab.json").read_text())
        except (OSError, ValueError) as exc:
            raise LabError(f"{self.dir} is not a lab directory ({exc})") from None
        self.spec = LabSpec(**self.info["spec"])

    # ------------------------------------------------------------------ facts
    @property
    def nodes(self) -> list[dict]:
        """Node records: name, addr, zone, id64."""
        return self.info["nodes"]

    def node(self, name: str) -> dict:
        """The record of node ``name``."""
        for n in self.nodes:
            if n["name"] == name:
                return n
        raise LabError(f"no node {name!r} in this lab")

    def node_dir(self, name: str) -> Path:
        """``<lab>/nodes/<name>``."""
        return self.dir / "nodes" / name

    @property
    def prometheus_url(self) -> str:
        """Base URL of the lab's Prometheus."""
        return self.info["prometheus_url"]

    def launcher(self, version: str) -> Path:
        """The lab "binary" of a Garage version."""
        return self.dir / "dist" / f"garage-v{version.removeprefix('v')}"

    # ------------------------------------------------------------------ up
    @classmethod
    def up(cls, spec: LabSpec, wait: bool = True, timeout: float = 60.0, wait_prometheus: bool = True) -> "Lab":
        """Create and start a lab; with ``wait``, return once it is healthy (and, with
        ``wait_prometheus``, once Prometheus has scraped every node: ~6 s on a fresh TSDB).

        Raises:
            LabError: missing system tools, a busy address, or a lab that did not get healthy.
        """
        if spec.version not in PERSONALITIES:
            raise LabError(f"unknown version {spec.version}; the lab simulates {', '.join(PERSONALITIES)}")
        for tool in (SSHD, shutil.which("prometheus") or "prometheus", shutil.which("ssh-keygen") or "ssh-keygen"):
            if not Path(tool).exists():
                raise LabError(f"{tool} is missing: run `make deps` (apt-get install openssh-server prometheus)")
        t0 = time.monotonic()
        root = Path(spec.dir).resolve()
        spec.dir = str(root)
        if (root / "lab.json").exists():
            raise LabError(f"{root} already holds a lab: run `garage-lab down --dir {root}` first")
        if (root / "lab.down.json").exists():
            shutil.rmtree(root)  # the remains of a lab that was taken down
        elif root.exists() and any(root.iterdir()):
            raise LabError(f"{root} is not empty: give `up` a new directory")
        root.mkdir(parents=True, exist_ok=True)
        spec.subnet = spec.subnet or _free_subnet()
        rpc_secret = hashlib.sha256(f"rpc-secret:{spec.seed}".encode()).hexdigest()
        if spec.metrics_token is None:
            spec.metrics_token = hashlib.sha256(f"metrics:{spec.seed}".encode()).hexdigest()[:32]
        if spec.admin_token is None:
            spec.admin_token = hashlib.sha256(f"admin:{spec.seed}".encode()).hexdigest()[:32]
        (root / "dist").mkdir(exist_ok=True)
        (root / "bin").mkdir(exist_ok=True)
        for v in PERSONALITIES:
            _write_exec(root / "dist" / f"garage-v{v}", _launcher(root, v))
        _write_exec(root / "bin" / "garage-service", _service_script(root))
        shims.install(root)  # fault shims for tar and df, first on the sessions' PATH

        nodes = []
        roles = {}
        for z in range(spec.zones):
            for i in range(spec.per_zone):
                name = f"node-{ZONE_LETTERS[z]}{i + 1}"
                _sk, pub = cluster.node_keypair(spec.seed, name)
                idx = len(nodes) + 1
                node = {"name": name, "addr": f"{spec.subnet}.{idx}", "zone": f"dc{z + 1}", "id64": pub.hex()}
                nodes.append(node)
                roles[pub.hex()] = cluster.Role(node["zone"], 1, ())
        layout = cluster.compute_layout(roles)
        ds = cluster.make_dataset(spec.seed, spec.buckets, spec.objects_per_bucket)
        peers = [f"{n['id64']}@{n['addr']}:{PORT_RPC}" for n in nodes]
        info = {"spec": asdict(spec), "nodes": nodes, "rpc_secret": rpc_secret,
                "prometheus_url": f"http://{spec.subnet}.254:{spec.prometheus_port}",
                "created": time.time(), "pids": {}}
        (root / "lab.json").write_text(json.dumps(info, indent=1))
        lab = cls(root)
        p = PERSONALITIES[spec.version]
        for node in nodes:
            lab._make_node(node, peers, rpc_secret, layout, ds, p)
        lab._write_ssh()
        lab._write_prometheus()
        lab._write_inventory()
        try:
            lab._start_sshd()
            lab._start_prometheus()
            for node in nodes:
                service.start(lab.node_dir(node["name"]))
            if wait:
                lab.wait_ready(timeout=max(5.0, timeout - (time.monotonic() - t0)), prometheus=wait_prometheus)
        except BaseException:
            lab.down()
            raise
        lab.info["up_seconds"] = round(time.monotonic() - t0, 2)
        lab._save()
        return lab

    def _save(self) -> None:
        tmp = self.dir / "lab.json.tmp"
        tmp.write_text(json.dumps(self.info, indent=1))
        os.replace(tmp, self.dir / "lab.json")

    def _make_node(self, node: dict, peers: list[str], rpc_secret: str, layout: cluster.Layout,
                   ds: cluster.DataSet, p) -> None:
        nd = self.node_dir(node["name"])
        for sub in ("etc", "usr/local/bin", "meta", "data", "log", "run"):
            (nd / sub).mkdir(parents=True, exist_ok=True)
        (nd / "node.json").write_text(json.dumps(node))
        (nd / "lab.json").write_text(json.dumps(self.spec.knobs))
        save_faults(nd / "faults.json", Faults())
        (nd / "etc" / "garage.toml").write_text(_garage_toml(self.spec, node, peers, rpc_secret))
        os.symlink(self.launcher(p.version), nd / "usr/local/bin/garage")
        meta = nd / "meta"
        sk, pub = cluster.node_keypair(self.spec.seed, node["name"])
        (meta / "node_key").write_bytes(sk)
        (meta / "node_key").chmod(0o600)
        (meta / "node_key.pub").write_bytes(pub)
        (meta / "cluster_layout").write_text(json.dumps(layout.to_json(), sort_keys=True))
        (meta / "peer_list").write_text(json.dumps(sorted([n.split("@")[0], n.split("@")[1]] for n in peers if not n.startswith(node["id64"]))))
        store = Store(meta)
        store.load()
        self._fill_trees(store, node["id64"], layout, ds, p)
        store.mark_dirty()
        store.flush()
        (meta / "db" / "conf").write_text("segment_size: 524288\nuse_compression: false\nversion: 0.34\n")
        if self.spec.meta_size:
            write_padding(meta, self.spec.meta_size, f"{self.spec.seed}:{node['name']}")
        if p.has_counters:
            (meta / "resync_cfg").write_text(json.dumps({"n_workers": 1, "tranquility": 2}))
            now = time.time()
            (meta / "scrub_info").write_text(json.dumps({
                "time_last_complete_scrub": now - 86400, "tranquility": 4, "corruptions_detected": 0,
                "next_run": now + 29 * 86400, "progress": None}, sort_keys=True))

    def _fill_trees(self, store: Store, me: str, layout: cluster.Layout, ds: cluster.DataSet, p) -> None:
        t = store.tree
        t("key:table")[ds.key_id] = {"name": ds.key_name, "secret": ds.key_secret}
        for b in ds.buckets:
            t("bucket_v2:table")[b.id] = {"alias": b.alias, "website": False, "keys": {ds.key_id: "RWO"}, "quotas": {}}
            t("bucket_alias:table")[b.alias] = b.id
        # a few objects never reached their last replica: `repair tables` has real work to do
        unsynced = {(o.bucket_id, o.key) for o in ds.objects[3::7][: self.spec.unsynced]}
        data_dir = self.node_dir(next(n["name"] for n in self.nodes if n["id64"] == me)) / "data"
        for o in ds.objects:
            holders = layout.nodes_of(cluster.partition_of(bytes.fromhex(o.bucket_id)))
            if me in holders and not (me == holders[-1] and (o.bucket_id, o.key) in unsynced):
                t("object:table").setdefault(o.bucket_id, {})[o.key] = {
                    "ts": o.timestamp * 1000, "node": holders[0], "deleted": False, "size": o.size,
                    "inline": None if o.inline_data is None else base64.b64encode(bytes.fromhex(o.inline_data)).decode(),
                    "version": o.version_uuid, "blocks": list(o.blocks)}
            if o.blocks and me in layout.nodes_of(cluster.partition_of(bytes.fromhex(o.version_uuid))):
                t("version:table")[o.version_uuid] = {"bucket": o.bucket_id, "key": o.key, "deleted": False, "blocks": list(o.blocks)}
            for h in o.blocks:
                if me in layout.nodes_of(cluster.partition_of(bytes.fromhex(h))):
                    t("block_ref:table").setdefault(h, {})[o.version_uuid] = False
                    t("block_local_rc")[h] = 1
                    path = data_dir / h[:2] / h[2:4] / h
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(bytes.fromhex(h))
        if p.has_counters:
            store.ensure_trees(COUNTER_TREES + ((INSERT_QUEUE_TREE,) if p.queue_workers else ()))
            for bucket, objs in t("object:table").items():
                c = {"objects": sum(1 for e in objs.values() if not e["deleted"]), "unfinished_uploads": 0,
                     "bytes": sum(e["size"] for e in objs.values() if not e["deleted"])}
                t("local_counter_v2:bucket_object_counter")[bucket] = dict(c)
                t("bucket_object_counter:table").setdefault(bucket, {})[me] = dict(c, ts=1)

    # ------------------------------------------------------------------ sshd
    def _write_ssh(self) -> None:
        ssh = self.dir / "ssh"
        (ssh / "home").mkdir(parents=True, exist_ok=True)
        if not (ssh / "host_ed25519").exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "garage-lab-host", "-f", str(ssh / "host_ed25519")], check=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "garage-lab-client", "-f", str(self.dir / "id_ed25519")], check=True)
        shutil.copy(self.dir / "id_ed25519.pub", ssh / "authorized_keys")
        (ssh / "authorized_keys").chmod(0o600)
        host_pub = (ssh / "host_ed25519.pub").read_text().split()[:2]
        lines = [f"[{n['addr']}]:{self.spec.ssh_port} {host_pub[0]} {host_pub[1]}" for n in self.nodes]
        (self.dir / "known_hosts").write_text("\n".join(lines) + "\n")
        self.write_sshd_config()

    def _sshd_shards(self) -> list[list[dict]]:
        # OpenSSH binds at most 16 listen sockets (MAX_LISTEN_SOCKS): one sshd per 16 nodes,
        # all with the same host key and settings, so clients see one SSH service
        return [self.nodes[i:i + SSHD_MAX_LISTEN] for i in range(0, len(self.nodes), SSHD_MAX_LISTEN)]

    def _sshd_config_path(self, k: int) -> Path:
        return self.dir / "ssh" / ("sshd_config" if k == 0 else f"sshd_config.{k}")

    def write_sshd_config(self) -> None:
        """(Re)write the sshd configs; nodes with an ``ssh-refuse`` fault get no listener."""
        ssh = self.dir / "ssh"
        path = f"{self.dir}/shim:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        for k, shard in enumerate(self._sshd_shards()):
            listen = [n for n in shard
                      if not Faults.load(self.node_dir(n["name"]) / "faults.json").find("ssh-refuse")]
            cfg = [
                "# garage-lab sshd: one sshd serving up to 16 node addresses (lab-environment.md)",
                f"Port {self.spec.ssh_port}",
                *[f"ListenAddress {n['addr']}" for n in listen],
                # a shard whose every address is refused still needs one listener to start
                *([] if listen else [f"ListenAddress {self.spec.subnet}.{253 - k}"]),
                f"HostKey {ssh / 'host_ed25519'}",
                f"PidFile {ssh / ('sshd.pid' if k == 0 else f'sshd.{k}.pid')}",
                f"AuthorizedKeysFile {ssh / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                # the lab directory may live under /tmp (mode 1777), which StrictModes refuses
                "StrictModes no",
                "MaxSessions 200",
                "MaxStartups 200:30:300",
                "PrintMotd no",
                "LogLevel ERROR",
                "ClientAliveInterval 30",
                # real Debian servers have it: staging a binary goes through SFTP
                "Subsystem sftp internal-sftp",
            ]
            for n in shard:
                # SetEnv does not merge with a global one: everything goes on the Match line (trap 1)
                cfg += [f"Match LocalAddress {n['addr']}",
                        f"  SetEnv GARAGE_LAB_NODE={n['name']} GARAGE_LAB_DIR={self.dir} HOME={ssh / 'home'} PATH={path}"]
            self._sshd_config_path(k).write_text("\n".join(cfg) + "\n")

    def _start_sshd(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        pids = []
        for k in range(len(self._sshd_shards())):
            cfg = self._sshd_config_path(k)
            check = subprocess.run([SSHD, "-t", "-f", str(cfg)], capture_output=True, text=True)
            if check.returncode != 0:
                raise LabError(f"sshd config rejected: {check.stderr.strip()}")
            log = open(self.dir / "ssh" / "sshd.log", "ab")
            proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
            pids.append(proc.pid)
        self.info["pids"]["sshd"] = pids[0]
        self.info["pids"]["sshd_shards"] = pids
        self._save()

    def _sshd_pids(self) -> list[int]:
        pids = self.info["pids"]
        return pids.get("sshd_shards") or ([pids["sshd"]] if pids.get("sshd") else [])

    def reload_sshd(self) -> None:
        """Apply changed sshd configs (SIGHUP re-execs sshd; open sessions stay)."""
        self.write_sshd_config()
        for pid in self._sshd_pids():
            if service.proc_alive(pid):
                os.kill(pid, signal.SIGHUP)
        time.sleep(0.3)

    # ------------------------------------------------------------------ prometheus
    def _write_prometheus(self) -> None:
        prom = self.dir / "prometheus"
        (prom / "data").mkdir(parents=True, exist_ok=True)
        lines = [
            "global:",
            "  scrape_interval: 1s",
            "  scrape_timeout: 900ms",
            "  evaluation_interval: 1s",
            "scrape_configs:",
            "  - job_name: garage",
        ]
        if self.spec.metrics_token:
            lines += ["    authorization:", "      type: Bearer", f"      credentials: {self.spec.metrics_token}"]
        lines.append("    static_configs:")
        for n in self.nodes:
            lines += [f"      - targets: ['{n['addr']}:{PORT_ADMIN}']",
                      f"        labels: {{node: '{n['name']}', zone: '{n['zone']}'}}"]
        (prom / "prometheus.yml").write_text("\n".join(lines) + "\n")

    def _start_prometheus(self) -> None:
        prom = self.dir / "prometheus"
        log = open(prom / "prometheus.log", "ab")
        proc = subprocess.Popen(
            [shutil.which("prometheus") or "prometheus", f"--config.file={prom / 'prometheus.yml'}",
             f"--storage.tsdb.path={prom / 'data'}", f"--web.listen-address={self.spec.subnet}.254:{self.spec.prometheus_port}",
             "--storage.tsdb.retention.time=1d"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=str(prom))
        self.info["pids"]["prometheus"] = proc.pid
        self._save()

    # ------------------------------------------------------------------ inventory
    def _write_inventory(self) -> None:
        import yaml

        svc = str(self.dir / "bin" / "garage-service")
        target = self.launcher("0.8.7")
        inv = {
            "cluster": f"lab-{self.spec.subnet.replace('.', '-')}",
            "ssh": {"user": "root", "port": self.spec.ssh_port, "key_file": str(self.dir / "id_ed25519"),
                    "known_hosts": str(self.dir / "known_hosts"), "connect_timeout": 5.0},
            "garage": {"config_path": "/etc/garage.toml", "binary_path": "/usr/local/bin/garage"},
            "service": {"kind": "custom", "start": [svc, "start"], "stop": [svc, "stop"],
                        "status": [svc, "is-active"], "signal": [svc, "kill", "--signal"]},
            "prometheus": {"url": self.prometheus_url, "job": "garage"},
            "api_gate": {"kind": "port", "moved_s3_port": 3990, "moved_web_port": 3992},
            "backup": {"root": str(self.dir / "backups")},
            "target": {"version": "0.8.7", "binary": str(target),
                       "sha256": hashlib.sha256(target.read_bytes()).hexdigest()},
            "nodes": [{"name": n["name"], "host": n["addr"], "zone": n["zone"],
                       "binary_path": str(self.node_dir(n["name"]) / "usr/local/bin/garage"),
                       "config_path": str(self.node_dir(n["name"]) / "etc/garage.toml")} for n in self.nodes],
        }
        header = "# Written by `garage-lab up`: how an orchestrator reaches this lab, as it would a real cluster.\n"
        (self.dir / "inventory.yaml").write_text(header + yaml.safe_dump(inv, sort_keys=False))

    # ------------------------------------------------------------------ readiness
    def wait_ready(self, timeout: float = 60.0, prometheus: bool = True) -> None:
        """Wait until every node sees its same-version peers and Prometheus scrapes all nodes.

        Raises:
            LabError: not ready before ``timeout`` (the message says what is missing).
        """
        deadline = time.monotonic() + timeout
        missing = "nothing checked yet"
        while time.monotonic() < deadline:
            missing = self._not_ready(prometheus)
            if not missing:
                return
            time.sleep(0.25)
        raise LabError(f"lab not ready after {timeout:.0f}s: {missing}")

    def _not_ready(self, prometheus: bool = True) -> str:
        st = self.status()
        for n in st["nodes"]:
            if not n["running"]:
                return f"{n['name']} is not running"
            if n.get("peers_up") is None:
                return f"{n['name']} does not answer RPC yet"
            # nodes with the same RPC tag connect (all 0.8.x interoperate); 0.7 and 0.8 never do
            same = [m for m in st["nodes"] if m["running"] and m["name"] != n["name"] and m["version"]
                    and PERSONALITIES[m["version"]].rpc_tag == PERSONALITIES[n["version"]].rpc_tag]
            if n["peers_up"] < len(same):
                return f"{n['name']} sees {n['peers_up']} of {len(same)} peers"
        if not self.sshd_ready():
            return "sshd is not listening yet"
        if not prometheus:
            return ""
        up = self.prometheus_up()
        want = sum(1 for n in st["nodes"] if n["running"])
        if up != want:
            return f"Prometheus reports {up} of {want} targets up"
        return ""

    def sshd_ready(self) -> bool:
        """Whether sshd accepts connections on every non-refused node address."""
        for n in self.nodes:
            if Faults.load(self.node_dir(n["name"]) / "faults.json").find("ssh-refuse"):
                continue
            try:
                socket.create_connection((n["addr"], self.spec.ssh_port), timeout=0.5).close()
            except OSError:
                return False
        return True

    def prometheus_up(self) -> int:
        """How many garage targets Prometheus reports as up (-1 if it does not answer)."""
        import urllib.parse
        import urllib.request

        q = urllib.parse.quote('count(up{job="garage"} == 1)')
        try:
            with urllib.request.urlopen(f"{self.prometheus_url}/api/v1/query?query={q}", timeout=2) as r:
                res = json.loads(r.read())["data"]["result"]
        except (OSError, ValueError, KeyError):
            return -1
        return int(float(res[0]["value"][1])) if res else 0

    # ------------------------------------------------------------------ status / inspect
    def _rpc_status(self, node: dict, version: str) -> dict | None:
        import asyncio

        from .garage import rpc
        from .garage.personality import get

        p = get(version)

        async def go():
            conn = await rpc.connect(node["addr"], PORT_RPC, {"tag": p.rpc_tag, "netkey": rpc.network_key(self.info["rpc_secret"]), "node": "cli"}, timeout=1.0)
            try:
                return await conn.call("status", timeout=2.0)
            finally:
                conn.close()
        try:
            return asyncio.run(go())
        except Exception:  # noqa: BLE001 - any failure means "does not answer"
            return None

    def daemon_info(self, name: str) -> dict | None:
        """The running daemon's self-description (pid, version), or None."""
        nd = self.node_dir(name)
        pid = service.main_pid(nd)
        if not pid:
            return None
        try:
            d = json.loads((nd / "run" / "daemon.json").read_text())
        except (OSError, ValueError):
            return {"pid": pid, "version": None}
        return d if d.get("pid") == pid else {"pid": pid, "version": None}

    def status(self) -> dict:
        """Per node: running, pid, version, peers seen; plus sshd and Prometheus state."""
        out = []
        for n in self.nodes:
            d = self.daemon_info(n["name"])
            row = {"name": n["name"], "addr": n["addr"], "zone": n["zone"], "running": d is not None,
                   "pid": d["pid"] if d else None, "version": d.get("version") if d else None,
                   "binary": os.path.basename(os.readlink(self.node_dir(n["name"]) / "usr/local/bin/garage"))
                   if (self.node_dir(n["name"]) / "usr/local/bin/garage").is_symlink() else "file",
                   "peers_up": None}
            if d and d.get("version"):
                st = self._rpc_status(n, d["version"])
                if st is not None:
                    row["peers_up"] = sum(1 for k, v in st["known"].items() if v["is_up"] and k != st["node"])
            out.append(row)
        pids = self.info["pids"]
        return {"dir": str(self.dir), "nodes": out,
                "sshd": bool(self._sshd_pids()) and all(service.proc_alive(p) for p in self._sshd_pids()),
                "prometheus": bool(pids.get("prometheus") and service.proc_alive(pids["prometheus"])),
                "prometheus_url": self.prometheus_url}

    def lock_holder(self, name: str) -> int | None:
        """PID holding the flock on the node's ``meta/db/db`` (from /proc/locks), or None."""
        path = self.node_dir(name) / "meta" / "db" / "db"
        try:
            ino = os.stat(path).st_ino
        except OSError:
            return None
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
            if len(parts) >= 6 and parts[1] == "FLOCK":
                try:
                    if int(parts[5].split(":")[2]) == ino:
                        return int(parts[4])
                except (IndexError, ValueError):
                    continue
        return None

    def meta_checksum(self, name: str) -> str:
        """SHA-256 over the relative paths and contents of every file of the metadata dir."""
        meta = self.node_dir(name) / "meta"
        h = hashlib.sha256()
        for path in sorted(p for p in meta.rglob("*") if p.is_file()):
            h.update(str(path.relative_to(meta)).encode() + b"\0")
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            h.update(b"\0")
        return h.hexdigest()

    def inspect(self, checksums: bool = True) -> dict:
        """Ground truth for tests (the orchestrator must never read this).

        Per node: running version and pid, lock holder, the binary the service would start,
        object counts and counter values from the persisted trees, and a metadata checksum;
        plus the acknowledged writes recorded by ``garage-lab traffic``.
        """
        nodes = {}
        for n in self.nodes:
            nd = self.node_dir(n["name"])
            d = self.daemon_info(n["name"])
            store = Store(nd / "meta")
            store.load()
            objects = {b: sum(1 for e in objs.values() if not e.get("deleted")) for b, objs in store.tree("object:table").items()}
            counters = {b: {k: v for k, v in c.items()} for b, c in store.trees.get("bucket_object_counter:table", {}).items()}
            binary = nd / "usr/local/bin/garage"
            nodes[n["name"]] = {
                "zone": n["zone"], "id64": n["id64"],
                "running_version": d.get("version") if d else None, "pid": d["pid"] if d else None,
                "lock_holder": self.lock_holder(n["name"]),
                "binary_target": os.readlink(binary) if binary.is_symlink() else str(binary),
                "objects": objects,
                "counter_trees": "local_counter_v2:bucket_object_counter" in store.trees,
                "counters": counters,
                "local_counters": store.trees.get("local_counter_v2:bucket_object_counter", {}),
                "insert_queue": len(store.trees.get(INSERT_QUEUE_TREE, {})),
                "merkle_todo": store.tree("merkle_todo"),
                "resync_queue": len(store.tree("block_local_resync_queue")),
                "resync_errors": len(store.tree("block_local_resync_errors")),
                "scrub_info": (nd / "meta" / "scrub_info").exists(),
                "meta_checksum": self.meta_checksum(n["name"]) if checksums else None,
            }
        acks = []
        ack_file = self.dir / "traffic" / "acks.jsonl"
        if ack_file.exists():
            acks = [json.loads(line) for line in ack_file.read_text().splitlines() if line.strip()]
        return {"nodes": nodes, "acknowledged_writes": acks}

    def downtime_windows(self) -> dict[str, list[tuple[float, float]]]:
        """Per node, the intervals between a stop (or kill) and the next start, from the
        service events: the ground truth a test uses to prove no two zones were down at once."""
        path = self.dir / "events.jsonl"
        events = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
        out: dict[str, list[tuple[float, float]]] = {n["name"]: [] for n in self.nodes}
        down_since: dict[str, float] = {}
        for e in sorted(events, key=lambda e: e["t"]):
            if e["event"] in ("stop", "kill") and e.get("signal") not in ("SIGHUP",) and e["node"] not in down_since:
                down_since[e["node"]] = e["t"]
            elif e["event"] == "start" and e["node"] in down_since:
                out[e["node"]].append((down_since.pop(e["node"]), e["t"]))
        for node, since in down_since.items():
            out[node].append((since, float("inf")))
        return out

    # ------------------------------------------------------------------ faults
    def fault(self, name: str, kind: str, count: int | None = None, **params) -> None:
        """Inject a fault on node ``name`` (see ``garage_lab.garage.knobs.FAULT_KINDS``)."""
        if kind not in FAULT_KINDS:
            raise LabError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        path = self.node_dir(name) / "faults.json"
        faults = Faults.load(path)
        entry = {"kind": kind, **{k: v for k, v in params.items() if v is not None}}
        if count is not None:
            entry["count"] = count
        faults.entries.append(entry)
        save_faults(path, faults)
        if kind == "ssh-refuse":
            self.reload_sshd()

    def clear_faults(self, name: str) -> None:
        """Remove every fault from node ``name``."""
        path = self.node_dir(name) / "faults.json"
        had_ssh = Faults.load(path).find("ssh-refuse") is not None
        save_faults(path, Faults())
        if had_ssh:
            self.reload_sshd()

    def set_knobs(self, name: str, **knobs) -> None:
        """Change a node's knobs (a running daemon picks them up within a second)."""
        path = self.node_dir(name) / "lab.json"
        try:
            cur = json.loads(path.read_text())
        except (OSError, ValueError):
            cur = {}
        cur.update(knobs)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cur))
        os.replace(tmp, path)

    # ------------------------------------------------------------------ down
    def down(self) -> list[int]:
        """Kill every process of this lab; return the PIDs that were killed."""
        killed = []
        targets = []
        for n in self.nodes:
            pid = service.main_pid(self.node_dir(n["name"]))
            if pid:
                targets.append(pid)
        for pid in self._sshd_pids() + [self.info["pids"].get("prometheus")]:
            if pid and service.proc_alive(pid):
                targets.append(pid)
        # sweep: anything else started from this lab (offline repairs, traffic, ssh sessions)
        marker = str(self.dir) + "/"
        me = os.getpid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in (me,) or int(entry.name) in targets:
                continue
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmd and service.proc_alive(int(entry.name)):
                targets.append(int(entry.name))
        for pid in targets:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        for pid in killed:
            service.wait_exit(pid, 5)
        self.info["pids"] = {}
        self.info["down"] = time.time()
        self._save()
        (self.dir / "lab.json").rename(self.dir / "lab.down.json")
        return killed
