"""Building a lab directory: launchers, node directories with data, configs and keys.

``create(spec)`` lays out ``spec.dir`` (nothing is started here):

- ``dist/garage-v<version>``: one launcher per simulated Garage version (the "binaries");
- ``nodes/<name>/``: per node ``etc/garage.toml``, ``usr/local/bin/garage`` (a symlink to a
  launcher: swapping it is a binary swap), ``meta/`` (node key, layout, peer list, the seeded
  trees), ``data/`` (the blocks), ``log/``, ``run/``, and the lab-only ``node.json``,
  ``lab.json`` (knobs) and ``faults.json``;
- ``ssh/``: the sshd configs (one per 16 nodes), host key, authorized client key, empty HOME;
- ``prometheus/``: its config and TSDB directory;
- ``inventory.yaml``, ``known_hosts``, ``id_ed25519``: what an orchestrator needs to reach the
  cluster exactly as it would reach a real one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import sys
import time
from dataclasses import asdict
from pathlib import Path

from . import shims
from .garage import cluster
from .garage.knobs import Faults, save_faults
from .garage.personality import PERSONALITIES
from .garage.store import COUNTER_TREES, INSERT_QUEUE_TREE, Store, write_padding
from .spec import PORT_ADMIN, PORT_RPC, PORT_S3, PORT_WEB, PROJECT_ROOT, SSHD_MAX_LISTEN, SUBNETS, ZONE_LETTERS, LabError, LabSpec


#: In a netns lab's launchers, the socket path's stand-in for the caller's network namespace
#: (its inode): :mod:`garage_lab.fastcli` fills it in, so a call reaches the fork server of the
#: namespace it was made in, never another node's.
NETNS_MARK = "@NETNS@"


def cli_socket(lab: Path, netns: int | str | None = None) -> str:
    """The Unix socket of the lab's fork server (:mod:`garage_lab.forkserver`): short, under
    the temp dir (a socket path has at most 107 bytes; a lab's directory may be deep).

    ``netns``: a netns lab has one server per node, in the node's namespace; its socket is
    named by that namespace's inode (or :data:`NETNS_MARK`, for the launchers)."""
    digest = hashlib.sha256(str(Path(lab).resolve()).encode()).hexdigest()[:16]
    tail = "" if netns is None else f"-ns{netns}"
    return os.path.join(tempfile.gettempdir(), f"garage-lab-cli-{digest}{tail}.sock")


def _fast_path(lab: Path, target: str, skip: str = "", netns: bool = False) -> str:
    """The launchers' shortcut: hand the call to the lab's fork server when it runs (see
    :mod:`garage_lab.forkserver`); ``skip``: a ``case`` pattern of calls that stay processes
    of their own. ``netns``: the servers are per node namespace; the client picks its own
    namespace's (the shell only checks that this lab has one at all)."""
    client = f'exec "{sys.executable}" -I -S "{PROJECT_ROOT}/garage_lab/fastcli.py"'
    if netns:
        any_sock = cli_socket(lab, "*")
        go = (f'for s in {any_sock}; do if [ -S "$s" ]; then {client} "{cli_socket(lab, NETNS_MARK)}" {target} "$@"; '
              'fi; break; done')
    else:
        sock = cli_socket(lab)
        go = f'if [ -S "{sock}" ]; then {client} "{sock}" {target} "$@"; fi'
    if not skip:
        return go + "\n"
    return f'case " $* " in\n  {skip}) ;;\n  *) {go} ;;\nesac\n'


def _launcher(lab: Path, version: str, netns: bool = False) -> str:
    return (
        "#!/bin/sh\n"
        f"# garage-lab: simulated Garage v{version} (stdlib Python; see garage_lab/garage)\n"
        'if [ -n "$GARAGE_LAB_NODE" ] && [ -z "$GARAGE_CONFIG_FILE" ]; then\n'
        f'  GARAGE_LAB_DEFAULT_CONFIG="{lab}/nodes/$GARAGE_LAB_NODE/etc/garage.toml"; export GARAGE_LAB_DEFAULT_CONFIG\n'
        "fi\n"
        f'GARAGE_LAB_DIR="{lab}"; export GARAGE_LAB_DIR\n'
        f'PYTHONPATH="{PROJECT_ROOT}"; export PYTHONPATH\n'
        # the daemon and offline-repair stay processes of their own (their PID holds the DB lock)
        + _fast_path(lab, f"garage:{version}", skip='*" server "*|*" offline-repair "*', netns=netns)
        + f'exec "{sys.executable}" -S -m garage_lab.garage {version} "$@"\n'
    )


#: ``is-active`` and ``kill --signal SIG`` in POSIX sh, as :mod:`garage_lab.service` does them
#: (same pid file, same liveness test, same event line): no Python start for the calls an
#: orchestrator makes most, a poll of ``is-active`` or the signal of a stop (issue 13 §5).
_SERVICE_SH = r"""
alive() {  # the pid file's process lives, is not a zombie, and is this node's daemon
  pid=$(cat "$nd/run/garage.pid" 2>/dev/null) || return 1
  case "$pid" in ''|*[!0-9]*) return 1 ;; esac
  IFS= read -r st < "/proc/$pid/stat" 2>/dev/null || return 1
  st=${st##*) }
  case "$st" in Z*|X*) return 1 ;; esac
  case "$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" in *"$nd"*) return 0 ;; esac
  return 1
}
if [ -n "$GARAGE_LAB_NODE" ]; then
  nd="$GARAGE_LAB_DIR/nodes/$GARAGE_LAB_NODE"
  case "$#:${1:-}:${2:-}" in
  1:is-active:)
    if alive; then echo active; exit 0; fi
    state=$(cat "$nd/run/state" 2>/dev/null) || state=stopped
    case "$state" in started|failed) echo failed ;; *) echo inactive ;; esac
    exit 3 ;;
  3:kill:--signal)
    sig=${3#SIG}
    case "$sig" in HUP|INT|QUIT|KILL|USR1|USR2|TERM|CONT|STOP)
      alive || exit 0
      printf '{"t": %s, "node": "%s", "event": "kill", "pid": %s, "signal": "SIG%s"}\n' \
        "$(date +%s.%N)" "$GARAGE_LAB_NODE" "$pid" "$sig" >> "$GARAGE_LAB_DIR/events.jsonl"
      kill -s "$sig" "$pid" 2>/dev/null
      exit 0 ;;
    esac ;;
  esac
fi
"""


def _service_script(lab: Path, netns: bool = False) -> str:
    return (
        "#!/bin/sh\n"
        "# garage-lab: service control for the node this session landed on (see garage_lab/service.py)\n"
        f'GARAGE_LAB_DIR="{lab}"; export GARAGE_LAB_DIR\n'
        f'PYTHONPATH="{PROJECT_ROOT}"; export PYTHONPATH\n'
        + _SERVICE_SH.lstrip("\n")
        + _fast_path(lab, "service", netns=netns)
        + f'exec "{sys.executable}" -S -m garage_lab.service "$@"\n'
    )


def _write_exec(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def _discovery_keys(spec: LabSpec) -> list[str]:
    """0.7-style top-level discovery keys (``LabSpec.discovery``): what a 0.7 cluster that finds
    its peers through Consul or Kubernetes has; 0.8 ignores them (nothing listens: the lab's
    peers come from ``bootstrap_peers``, the daemon only reports what its config turned on)."""
    out = []
    if "consul" in spec.discovery:
        out += ['consul_host = "127.0.0.1:8500"', 'consul_service_name = "garage-lab"']
    if "kubernetes" in spec.discovery:
        out += ['kubernetes_namespace = "garage"', 'kubernetes_service_name = "garage-lab"',
                "kubernetes_skip_crd = true"]
    return out


def _garage_toml(spec: LabSpec, node: dict, peers: list[str], rpc_secret: str) -> str:
    nd = Path(spec.dir) / "nodes" / node["name"]
    addr = node["addr"]
    lines = [
        f'metadata_dir = "{nd / "meta"}"',
        f'data_dir = "{nd / "data"}"',
        "",
        f'replication_mode = "{spec.replication_mode}"',
        "",
        f'rpc_bind_addr = "{addr}:{PORT_RPC}"',
        f'rpc_public_addr = "{addr}:{PORT_RPC}"',
        f'rpc_secret = "{rpc_secret}"',
        "bootstrap_peers = [",
        *[f'  "{p}",' for p in peers],
        "]",
        *_discovery_keys(spec),
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


def create(lab_cls, spec: LabSpec):
    """Lay out a new lab directory for ``spec`` and return ``lab_cls(dir)`` (nothing runs yet).

    Raises:
        LabError: the directory already holds a lab or is not empty.
    """
    root = Path(spec.dir).resolve()
    spec.dir = str(root)
    if (root / "lab.json").exists():
        raise LabError(f"{root} already holds a lab: run `garage-lab down --dir {root}` first")
    if (root / "lab.down.json").exists():
        shutil.rmtree(root)  # the remains of a lab that was taken down
    elif root.exists() and any(root.iterdir()):
        raise LabError(f"{root} is not empty: give `up` a new directory")
    root.mkdir(parents=True, exist_ok=True)
    if spec.netns:
        from . import netns

        spec.subnet = spec.subnet or netns.pick_subnet()
    else:
        spec.subnet = spec.subnet or next(SUBNETS)
    rpc_secret = hashlib.sha256(f"rpc-secret:{spec.seed}".encode()).hexdigest()
    if spec.metrics_token is None:
        spec.metrics_token = hashlib.sha256(f"metrics:{spec.seed}".encode()).hexdigest()[:32]
    if spec.admin_token is None:
        spec.admin_token = hashlib.sha256(f"admin:{spec.seed}".encode()).hexdigest()[:32]
    (root / "dist").mkdir(exist_ok=True)
    (root / "bin").mkdir(exist_ok=True)
    for v in PERSONALITIES:
        _write_exec(root / "dist" / f"garage-v{v}", _launcher(root, v, spec.netns))
    _write_exec(root / "bin" / "garage-service", _service_script(root, spec.netns))
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
            "s3": {"region": "garage", "access_key_id": ds.key_id, "secret_access_key": ds.key_secret},
            "created": time.time(), "pids": {}}
    if spec.netns:
        info["netns"] = netns.plan(root, spec.subnet, nodes)  # recorded before anything is made
    (root / "lab.json").write_text(json.dumps(info, indent=1))
    lab = lab_cls(root)
    p = PERSONALITIES[spec.version]
    for node in nodes:
        make_node(lab, node, peers, rpc_secret, layout, ds, p)
    write_ssh(lab)
    write_prometheus(lab)
    write_inventory(lab)
    return lab


def make_node(lab, node: dict, peers: list[str], rpc_secret: str, layout: cluster.Layout,
               ds: cluster.DataSet, p) -> None:
    nd = lab.node_dir(node["name"])
    for sub in ("etc", "usr/local/bin", "meta", "data", "log", "run"):
        (nd / sub).mkdir(parents=True, exist_ok=True)
    (nd / "node.json").write_text(json.dumps(node))
    (nd / "lab.json").write_text(json.dumps(lab.spec.knobs))
    # a node built without zstd keeps that fault (clear_faults removes it, as it removes any)
    save_faults(nd / "faults.json", Faults([{"kind": "no-zstd"}] if node["name"] in lab.spec.no_zstd else []))
    (nd / "etc" / "garage.toml").write_text(_garage_toml(lab.spec, node, peers, rpc_secret))
    os.symlink(lab.launcher(p.version), nd / "usr/local/bin/garage")
    meta = nd / "meta"
    sk, pub = cluster.node_keypair(lab.spec.seed, node["name"])
    (meta / "node_key").write_bytes(sk)
    (meta / "node_key").chmod(0o600)
    (meta / "node_key.pub").write_bytes(pub)
    (meta / "cluster_layout").write_text(json.dumps(layout.to_json(), sort_keys=True))
    (meta / "peer_list").write_text(json.dumps(sorted([n.split("@")[0], n.split("@")[1]] for n in peers if not n.startswith(node["id64"]))))
    store = Store(meta)
    store.load()
    fill_trees(lab, store, node["id64"], layout, ds, p)
    store.mark_dirty()
    store.flush()
    (meta / "db" / "conf").write_text("segment_size: 524288\nuse_compression: false\nversion: 0.34\n")
    if lab.spec.meta_size:
        write_padding(meta, lab.spec.meta_size, f"{lab.spec.seed}:{node['name']}")
    if p.has_counters:
        (meta / "resync_cfg").write_text(json.dumps({"n_workers": 1, "tranquility": 2}))
        now = time.time()
        (meta / "scrub_info").write_text(json.dumps({
            "time_last_complete_scrub": now - 86400, "tranquility": 4, "corruptions_detected": 0,
            "next_run": now + 29 * 86400, "progress": None}, sort_keys=True))


def fill_trees(lab, store: Store, me: str, layout: cluster.Layout, ds: cluster.DataSet, p) -> None:
    t = store.tree
    t("key:table")[ds.key_id] = {"name": ds.key_name, "secret": ds.key_secret}
    for b in ds.buckets:
        t("bucket_v2:table")[b.id] = {"alias": b.alias, "website": False, "keys": {ds.key_id: "RWO"}, "quotas": {}}
        t("bucket_alias:table")[b.alias] = b.id
    # a few objects never reached their last replica: `repair tables` has real work to do
    unsynced = {(o.bucket_id, o.key) for o in ds.objects[3::7][: lab.spec.unsynced]}
    data_dir = lab.node_dir(next(n["name"] for n in lab.nodes if n["id64"] == me)) / "data"
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


def write_ssh(lab) -> None:
    ssh = lab.dir / "ssh"
    (ssh / "home").mkdir(parents=True, exist_ok=True)
    if not (ssh / "host_ed25519").exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "garage-lab-host", "-f", str(ssh / "host_ed25519")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "garage-lab-client", "-f", str(lab.dir / "id_ed25519")], check=True)
    shutil.copy(lab.dir / "id_ed25519.pub", ssh / "authorized_keys")
    (ssh / "authorized_keys").chmod(0o600)
    host_pub = (ssh / "host_ed25519.pub").read_text().split()[:2]
    lines = [f"[{n['addr']}]:{lab.spec.ssh_port} {host_pub[0]} {host_pub[1]}" for n in lab.nodes]
    (lab.dir / "known_hosts").write_text("\n".join(lines) + "\n")
    write_sshd_config(lab)


def sshd_shards(lab) -> list[list[dict]]:
    # OpenSSH binds at most 16 listen sockets (MAX_LISTEN_SOCKS): one sshd per 16 nodes,
    # all with the same host key and settings, so clients see one SSH service
    # a netns lab runs one sshd per node, in the node's namespace
    if lab.spec.netns:
        return [[n] for n in lab.nodes]
    return [lab.nodes[i:i + SSHD_MAX_LISTEN] for i in range(0, len(lab.nodes), SSHD_MAX_LISTEN)]


def sshd_config_path(lab, k: int) -> Path:
    return lab.dir / "ssh" / ("sshd_config" if k == 0 else f"sshd_config.{k}")


def _spare_address(lab, k: int) -> str:
    # in a node's own namespace only its loopback is free for a listener nobody reaches
    return "127.0.0.1" if lab.spec.netns else f"{lab.spec.subnet}.{253 - k}"


def write_sshd_config(lab) -> None:
    """(Re)write the sshd configs; nodes with an ``ssh-refuse`` fault get no listener."""
    ssh = lab.dir / "ssh"
    path = f"{lab.dir}/shim:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
    for k, shard in enumerate(sshd_shards(lab)):
        listen = [n for n in shard
                  if not Faults.load(lab.node_dir(n["name"]) / "faults.json").find("ssh-refuse")]
        cfg = [
            "# garage-lab sshd: one sshd serving up to 16 node addresses (lab-environment.md)",
            f"Port {lab.spec.ssh_port}",
            *[f"ListenAddress {n['addr']}" for n in listen],
            # a shard whose every address is refused still needs one listener to start
            *([] if listen else [f"ListenAddress {_spare_address(lab, k)}"]),
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
            f"LogLevel {lab.spec.sshd_log_level}",
            "ClientAliveInterval 30",
            # real Debian servers have it: staging a binary goes through SFTP
            "Subsystem sftp internal-sftp",
        ]
        for n in shard:
            # SetEnv does not merge with a global one: everything goes on the Match line (trap 1)
            cfg += [f"Match LocalAddress {n['addr']}",
                    f"  SetEnv GARAGE_LAB_NODE={n['name']} GARAGE_LAB_DIR={lab.dir} HOME={ssh / 'home'} PATH={path}"]
        sshd_config_path(lab, k).write_text("\n".join(cfg) + "\n")


def write_prometheus(lab) -> None:
    prom = lab.dir / "prometheus"
    (prom / "data").mkdir(parents=True, exist_ok=True)
    lines = [
        "global:",
        "  scrape_interval: 1s",
        "  scrape_timeout: 900ms",
        "  evaluation_interval: 1s",
        "scrape_configs:",
        "  - job_name: garage",
    ]
    if lab.spec.metrics_token:
        lines += ["    authorization:", "      type: Bearer", f"      credentials: {lab.spec.metrics_token}"]
    lines.append("    static_configs:")
    for n in lab.nodes:
        lines += [f"      - targets: ['{n['addr']}:{PORT_ADMIN}']",
                  f"        labels: {{node: '{n['name']}', zone: '{n['zone']}'}}"]
    (prom / "prometheus.yml").write_text("\n".join(lines) + "\n")


def write_inventory(lab) -> None:
    import yaml

    svc = str(lab.dir / "bin" / "garage-service")
    target = lab.launcher("0.8.7")
    inv = {
        "cluster": f"lab-{lab.spec.subnet.replace('.', '-')}",
        "ssh": {"user": "root", "port": lab.spec.ssh_port, "key_file": str(lab.dir / "id_ed25519"),
                "known_hosts": str(lab.dir / "known_hosts"), "connect_timeout": 5.0},
        "garage": {"config_path": "/etc/garage.toml", "binary_path": "/usr/local/bin/garage"},
        "service": {"kind": "custom", "start": [svc, "start"], "stop": [svc, "stop"],
                    "status": [svc, "is-active"], "signal": [svc, "kill", "--signal"]},
        "prometheus": {"url": lab.prometheus_url, "job": "garage"},
        "api_gate": {"kind": "port", "moved_s3_port": 3990, "moved_web_port": 3992},
        "backup": {"root": str(lab.dir / "backups")},
        "target": {"version": "0.8.7", "binary": str(target),
                   "sha256": hashlib.sha256(target.read_bytes()).hexdigest()},
        "nodes": [{"name": n["name"], "host": n["addr"], "zone": n["zone"],
                   "binary_path": str(lab.node_dir(n["name"]) / "usr/local/bin/garage"),
                   "config_path": str(lab.node_dir(n["name"]) / "etc/garage.toml")} for n in lab.nodes],
    }
    header = "# Written by `garage-lab up`: how an orchestrator reaches this lab, as it would a real cluster.\n"
    (lab.dir / "inventory.yaml").write_text(header + yaml.safe_dump(inv, sort_keys=False))
