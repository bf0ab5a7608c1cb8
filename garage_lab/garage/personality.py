"""Version personalities of the simulated Garage.

A personality is a frozen bundle of facts about one Garage release that the simulator needs:
which output formats it uses, which commands exist, how it reacts to signals and locks. Every
behaviour that differs between versions reads a flag here instead of comparing version strings,
so the differences are listed in one place (references: garage-0.7-to-0.8.md sections 1, 12;
garage-0.8-late.md section 9).
"""

from __future__ import annotations

from dataclasses import dataclass

FEATURES_RELEASE_08 = (
    "k2v, sled, lmdb, sqlite, consul-discovery, kubernetes-discovery, metrics, "
    "telemetry-otlp, bundled-libs"
)


@dataclass(frozen=True)
class Personality:
    """Facts about one simulated Garage release.

    Attributes:
        version: semantic version without the ``v`` (``"0.8.7"``).
        rpc_tag: the netapp version tag; nodes and CLIs with different tags refuse each other.
        features: the ``[features: ...]`` list of ``--version``, or ``None`` (0.7.3 prints none).
        rust_version: the ``Rust compiler version:`` line of ``stats`` (0.8.2+), else ``None``.
        sigterm_graceful: SIGTERM gives a graceful shutdown (0.8); on 0.7.3 only SIGINT does.
        has_worker_cmd: ``garage worker`` exists (0.8).
        worker_list_table: 0.8.1+ tabular ``worker list`` (header ``TID State Name ...``).
        has_worker_get: ``worker get`` / generic ``worker set`` (0.8.2+).
        has_worker_info: ``worker info <tid>`` (0.8.1+).
        has_offline_repair: ``offline-repair`` exists (0.8).
        offline_repair_lock_panics: the sled lock conflict panics and aborts (-6) instead of
            exiting 1 with an error (0.8.0 vs 0.8.2+).
        offline_repair_queues_counters: counts go to the on-disk insert queue and are pushed
            after restart by the ``bucket_object_counter queue`` worker (0.8.2+).
        stats_tabular: ``stats`` uses the table layout (0.8.1+).
        stats_all_tolerant: ``stats -a`` prints ``Network error:`` inline instead of failing
            (0.8.1+).
        stats_storage_section: ``stats`` ends with Storage nodes / estimate (0.8.2+).
        status_data_avail: ``status`` has a DataAvail column (0.8.2+).
        has_health: ``GET /health`` and ``/v0/health`` exist (0.8.1+).
        has_counters: the object-counter tables exist (0.8).
        first_scrub_immediate: with no ``scrub_info`` the first start scrubs at once (0.8.0/0.8.1);
            from 0.8.2 the first scrub is scheduled 25-35 days ahead.
        full_metrics: ``/metrics`` exports table/block/rpc series (0.8); 0.7.3 only api_*/web_*.
        build_info_metric: ``garage_build_info`` and friends exist (0.8.2+).
        histogram_buckets: the ``le`` buckets of ``*_duration`` histograms.
        last_seen_timeago: ``status`` Last seen uses timeago strings (0.8) instead of ``Ns ago``.
        cli_warns_default_addr: the CLI prints the two WARN lines about the default address
            before connecting (0.8.0 and 0.7.3); 0.8.1+ warns only after a failure.
        log_timestamps: daemon logs carry RFC3339 timestamps and ANSI colour (0.8).
        bad_token_text: the 403 text for a wrong bearer token.
        merkle_worker_suffix: ``Merkle tree updater`` (0.8.0) or ``Merkle`` (0.8.1+).
        job_workers: 0.8.0 spawns ``Job worker #0..#15`` (TIDs 1-16); gone from 0.8.2.
        queue_workers: per-table ``<t> queue`` workers (0.8.2+).
        shutdown_deadline_s: worker drain deadline at shutdown.
        scrub_subcommands: ``repair scrub`` takes ``start|pause|resume|cancel|set-tranquility``
            (0.8); 0.7.3 takes an optional positional ``[tranquility]`` instead.
        has_block_cmd: ``garage block ...`` exists (0.8.1+).
        stats_db_engine: ``stats`` prints ``Database engine: ...`` (0.8, which has several engines).
        offline_repair_runs_workers: ``offline-repair`` builds a full ``Garage`` with a
            ``BackgroundRunner::new(16)``: syncs, scrub and resync run inside it (0.8.0,
            source-audit); 0.8.2+ runs the repair without workers.
        table_spawn_order: the order the tables spawn their workers in, when it differs from
            the order they are listed in (0.8.0, source-audit); empty: the listing order.
    """

    version: str
    rpc_tag: int
    features: str | None
    rust_version: str | None
    sigterm_graceful: bool
    has_worker_cmd: bool
    worker_list_table: bool
    has_worker_get: bool
    has_worker_info: bool
    has_offline_repair: bool
    offline_repair_lock_panics: bool
    offline_repair_queues_counters: bool
    stats_tabular: bool
    stats_all_tolerant: bool
    stats_storage_section: bool
    status_data_avail: bool
    has_health: bool
    has_counters: bool
    first_scrub_immediate: bool
    full_metrics: bool
    build_info_metric: bool
    histogram_buckets: tuple[str, ...]
    last_seen_timeago: bool
    cli_warns_default_addr: bool
    log_timestamps: bool
    bad_token_text: str
    merkle_worker_suffix: str
    job_workers: bool
    queue_workers: bool
    shutdown_deadline_s: float
    scrub_subcommands: bool = False
    has_block_cmd: bool = False
    stats_db_engine: bool = False
    offline_repair_runs_workers: bool = False
    table_spawn_order: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        """The version as printed by Garage, with its ``v`` prefix (``v0.8.0``)."""
        return f"v{self.version}"

    @property
    def major_minor(self) -> tuple[int, int]:
        """``(0, 7)`` or ``(0, 8)``."""
        parts = self.version.split(".")
        return int(parts[0]), int(parts[1])

    @property
    def version_string(self) -> str:
        """What ``garage --version`` prints (ref 2.4 / late 6)."""
        if self.features is None:
            return f"garage {self.tag}"
        return f"garage {self.tag} [features: {self.features}]"

    @property
    def stats_version_string(self) -> str:
        """The part after ``Garage version: `` in ``stats`` (same as ``--version`` minus ``garage ``)."""
        return self.version_string[len("garage "):]


OLD_BUCKETS = ("0.5", "0.9", "0.99", "+Inf")
NEW_BUCKETS = tuple(
    "0.001 0.0015 0.002 0.003 0.005 0.007 0.01 0.015 0.02 0.03 0.05 0.07 0.1 0.15 0.2 0.3 "
    "0.5 0.7 1 1.5 2 3 5 7 10 15 20 30 40 50 60 70 100 +Inf".split()
)

V073 = Personality(
    version="0.7.3",
    rpc_tag=0x6761726167650007,
    features=None,
    rust_version=None,
    sigterm_graceful=False,
    has_worker_cmd=False,
    worker_list_table=False,
    has_worker_get=False,
    has_worker_info=False,
    has_offline_repair=False,
    offline_repair_lock_panics=True,
    offline_repair_queues_counters=False,
    stats_tabular=False,
    stats_all_tolerant=False,
    stats_storage_section=False,
    status_data_avail=False,
    has_health=False,
    has_counters=False,
    first_scrub_immediate=False,
    full_metrics=False,
    build_info_metric=False,
    histogram_buckets=OLD_BUCKETS,
    last_seen_timeago=False,
    cli_warns_default_addr=True,
    log_timestamps=False,
    bad_token_text="Forbidden: Invalid authorization token provided",
    merkle_worker_suffix="Merkle tree updater",
    job_workers=False,
    queue_workers=False,
    shutdown_deadline_s=9.0,
    scrub_subcommands=False,
    has_block_cmd=False,
    stats_db_engine=False,
)

V080 = Personality(
    version="0.8.0",
    rpc_tag=0x6761726167650008,
    features=FEATURES_RELEASE_08,
    rust_version=None,
    sigterm_graceful=True,
    has_worker_cmd=True,
    worker_list_table=False,
    has_worker_get=False,
    has_worker_info=False,
    has_offline_repair=True,
    offline_repair_lock_panics=True,
    offline_repair_queues_counters=False,
    stats_tabular=False,
    stats_all_tolerant=False,
    stats_storage_section=False,
    status_data_avail=False,
    has_health=False,
    has_counters=True,
    first_scrub_immediate=True,
    full_metrics=True,
    build_info_metric=False,
    histogram_buckets=OLD_BUCKETS,
    last_seen_timeago=True,
    cli_warns_default_addr=True,
    log_timestamps=True,
    bad_token_text="Forbidden: Invalid authorization token provided",
    merkle_worker_suffix="Merkle tree updater",
    job_workers=True,
    queue_workers=False,
    shutdown_deadline_s=9.0,
    scrub_subcommands=True,
    has_block_cmd=False,
    stats_db_engine=True,
    offline_repair_runs_workers=True,
    # model/garage.rs of v0.8.0 (source-audit); the k2v tables' inner order is [inf]
    table_spawn_order=("bucket_v2", "bucket_alias", "key", "block_ref", "version", "bucket_object_counter",
                       "object", "k2v_index_counter_v2", "k2v_item"),
)

V087 = Personality(
    version="0.8.7",
    rpc_tag=0x6761726167650008,
    features=FEATURES_RELEASE_08,
    rust_version="1.68.0",
    sigterm_graceful=True,
    has_worker_cmd=True,
    worker_list_table=True,
    has_worker_get=True,
    has_worker_info=True,
    has_offline_repair=True,
    offline_repair_lock_panics=False,
    offline_repair_queues_counters=True,
    stats_tabular=True,
    stats_all_tolerant=True,
    stats_storage_section=True,
    status_data_avail=True,
    has_health=True,
    has_counters=True,
    first_scrub_immediate=False,
    full_metrics=True,
    build_info_metric=True,
    histogram_buckets=NEW_BUCKETS,
    last_seen_timeago=True,
    cli_warns_default_addr=False,
    log_timestamps=True,
    bad_token_text="Forbidden: Invalid authorization token",
    merkle_worker_suffix="Merkle",
    job_workers=False,
    queue_workers=True,
    shutdown_deadline_s=8.0,
    scrub_subcommands=True,
    has_block_cmd=True,
    stats_db_engine=True,
)

PERSONALITIES: dict[str, Personality] = {p.version: p for p in (V073, V080, V087)}


def get(version: str) -> Personality:
    """Return the personality for ``"0.7.3"``, ``"v0.8.0"`` or ``"0.8.7"``.

    Raises:
        KeyError: the lab does not simulate that version.
    """
    return PERSONALITIES[version.removeprefix("v")]
