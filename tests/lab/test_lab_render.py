"""Byte-exact tests of the simulated Garage's output formats (garage_lab.garage.render).

"ref" is shared/reference/garage-0.7-to-0.8.md, "late" is shared/reference/garage-0.8-late.md.
Samples copied from the references are compared byte for byte. The references' code blocks
drop trailing spaces, so where Garage prints some (late 1.1) the comparison says so explicitly.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from garage_lab.garage import render as r
from garage_lab.garage.personality import FEATURES_RELEASE_08, V073, V080, V087

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TB, GB = 10**12, 10**9
IDS = ("3ad2c1f0e9b8a7d6", "5b0e77aa01c2d3e4", "c4c4c4c4c4c4c4c4")
STATS_TABLES = ("bucket_v2", "key", "object", "version", "block_ref")


def rstrip_lines(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.split("\n"))


# ----------------------------------------------------------------------------- format_table


def test_format_table_pads_all_but_last_column_to_widest_plus_two():
    """ref 2.3: non-last columns padded to widest cell + 2, last cell unpadded."""
    assert r.format_table([["ID", "Zone"], ["3ad2c1f0e9b8a7d6", "dc1"]]) == (
        "ID                Zone\n3ad2c1f0e9b8a7d6  dc1\n"
    )


def test_format_table_empty_last_cell_keeps_trailing_padding():
    """late 1.1: an empty Last cell still prints the padded Consec cell (trailing spaces)."""
    assert r.format_table([["Consec", "Last"], ["-", ""]]) == "Consec  Last\n-       \n"


def test_format_table_last_cells_widen_their_column():
    """late 3.1: a row's last cell counts for its column's width (NO ROLE ASSIGNED widens Tags)."""
    out = r.format_table([["a", "Tags", "Zone"], ["b", "NO ROLE ASSIGNED"]])
    assert out == "a  Tags              Zone\nb  NO ROLE ASSIGNED\n"


def test_format_table_leading_empty_cells_and_empty_rows():
    """ref 2.3: headerless sub-tables start with an empty cell (2 spaces); [""] is a blank line."""
    assert r.format_table([["", "RW ", "GK1", "key"], [""], []]) == "  RW   GK1  key\n\n\n"
    assert r.format_table([]) == ""


# ----------------------------------------------------------------------------- bytesize


@pytest.mark.parametrize(
    "n, binary, decimal",
    [
        (0, "0 B", "0 B"),
        (999, "999 B", "999 B"),
        (1000, "1000 B", "1.0 KB"),
        (1023, "1023 B", "1.0 KB"),
        (1024, "1.0 kiB", "1.0 KB"),
        (1536, "1.5 kiB", "1.5 KB"),
        (1048576, "1.0 MiB", "1048.6 KB"),  # the ln(1024) exponent quirk of ref 2.13
        (1288490189, "1.2 GiB", "1.3 GB"),  # ~1.2 GiB: ref 2.13 sample "Size: 1.2 GiB (1.3 GB)"
        (10**12, "931.3 GiB", "1000.0 GB"),  # same quirk one unit up
        (2**64 - 1, "16.0 EiB", "18.4 EB"),
    ],
)
def test_bytesize_matches_bytesize_1_1_0(n, binary, decimal):
    """ref 2.13: bytesize 1.1.0 to_string_as(true) / to_string_as(false), quirks included."""
    assert (r.bytesize(n, True), r.bytesize(n, False)) == (binary, decimal)


def test_bytesize_rejects_values_outside_u64():
    """ref 2.13: counters must be cast to u64 by the caller (bucket info does it)."""
    with pytest.raises(ValueError):
        r.bytesize(-1, True)


def test_data_avail_cell_uses_decimal_units_and_one_decimal_percent():
    """late 3.1: DataAvail is `<avail> (<pct>%)` with bytesize Display (base 1000)."""
    assert r.data_avail_cell(1234 * GB, 2 * TB) == "1.2 TB (61.7%)"


# ----------------------------------------------------------------------------- timeago


@pytest.mark.parametrize(
    "secs, text",
    [
        (0, "now"),
        (0.999, "now"),
        (1, "1 second ago"),
        (17, "17 seconds ago"),
        (60, "1 minute ago"),
        (119, "1 minute ago"),
        (120, "2 minutes ago"),
        (3 * 3600 + 59, "3 hours ago"),
        (2 * 86400, "2 days ago"),
        (7 * 86400, "1 week ago"),
        (2_628_003, "1 month ago"),
        (2 * 12 * 2_628_003, "2 years ago"),
    ],
)
def test_timeago_prints_one_floored_unit(secs, text):
    """ref 2.7: timeago 0.3.1 strings, one unit only, `now` under a second."""
    assert r.timeago(secs) == text


def test_timeago_future_for_block_next_try():
    """late 3.3: `in 3 minutes`, `in now` under 1 s, `in asap` when overdue."""
    assert [r.timeago_future(s) for s in (180, 0.5, -1)] == ["in 3 minutes", "in now", "in asap"]


# ----------------------------------------------------------------------------- status


def status_row(id16, host, addr, tags=(), zone="dc1", capacity=1, *, role=True, pending=False, avail=None, seen=None):
    return r.StatusRow(id16, host, addr, tuple(tags), zone, capacity, role, pending, avail, seen)


SAMPLE_HEALTHY = [
    status_row("3ad2c1f0e9b8a7d6", "node-a1", "10.0.1.1:3901", ["a1"]),
    status_row("5b0e77aa01c2d3e4", "node-b1", "10.0.2.1:3901", zone="dc2"),
    status_row("77c0ffee12345678", "gw-1", "10.0.9.1:3901", capacity=None),
]
SAMPLE_FAILED = [
    status_row("c4c4c4c4c4c4c4c4", "node-c1", "10.0.3.1:3901", ["c1"], "dc3", seen=120),
    status_row("d5d5d5d5d5d5d5d5", "??", "??", (), "dc3"),
]


def test_status_sample_of_ref_2_7_for_0_8_0():
    """ref 2.7 sample (without its NO ROLE row, see the next test), byte-exact."""
    assert r.render_status(V080, SAMPLE_HEALTHY, SAMPLE_FAILED) == (
        "==== HEALTHY NODES ====\n"
        "ID                Hostname  Address        Tags  Zone  Capacity\n"
        "3ad2c1f0e9b8a7d6  node-a1   10.0.1.1:3901  [a1]  dc1   1\n"
        "5b0e77aa01c2d3e4  node-b1   10.0.2.1:3901  []    dc2   1\n"
        "77c0ffee12345678  gw-1      10.0.9.1:3901  []    dc1   gateway\n"
        "\n"
        "==== FAILED NODES ====\n"
        "ID                Hostname  Address        Tags  Zone  Capacity  Last seen\n"
        "c4c4c4c4c4c4c4c4  node-c1   10.0.3.1:3901  [c1]  dc3   1         2 minutes ago\n"
        "d5d5d5d5d5d5d5d5  ??        ??             []    dc3   1         never seen\n"
    )


def test_status_no_role_row_has_four_cells_and_widens_tags():
    """late 3.1 (correcting the ref 2.7 sample's alignment): NO ROLE ASSIGNED widens Tags to 16."""
    healthy = SAMPLE_HEALTHY[:1] + [status_row("9a9a9a9a9a9a9a9a", "node-new", "10.0.4.1:3901", role=False)]
    assert r.render_status(V080, healthy, []) == (
        "==== HEALTHY NODES ====\n"
        "ID                Hostname  Address        Tags              Zone  Capacity\n"
        "3ad2c1f0e9b8a7d6  node-a1   10.0.1.1:3901  [a1]              dc1   1\n"
        "9a9a9a9a9a9a9a9a  node-new  10.0.4.1:3901  NO ROLE ASSIGNED\n"
    )


def test_status_staged_role_shows_pending():
    """ref 2.7: a node without active role but with a staged one shows `(pending)`."""
    out = r.render_status(V080, [status_row("9a9a9a9a9a9a9a9a", "n", "a:1", role=False, pending=True)], [])
    assert out.endswith("9a9a9a9a9a9a9a9a  n         a:1      (pending)\n")


def test_status_0_7_3_last_seen_is_whole_seconds():
    """ref 2.7: v0.7.3 prints `<N>s ago` (u64 seconds), identical layout otherwise."""
    out = r.render_status(V073, SAMPLE_HEALTHY, [status_row("c4c4c4c4c4c4c4c4", "?", "10.0.3.1:3901", seen=125.9)])
    assert out.endswith("c4c4c4c4c4c4c4c4  ?         10.0.3.1:3901  []    dc1   1         125s ago\n")


def test_status_failed_block_only_for_role_holders():
    """ref 2.7: FAILED NODES appears only when a node with a role is down or unknown."""
    out = r.render_status(V080, SAMPLE_HEALTHY, [status_row("eeeeeeeeeeeeeeee", "x", "y", role=False)])
    assert "FAILED" not in out and out.count("\n") == 5


def test_status_sample_of_late_3_1_with_data_avail():
    """late 3.1 sample (0.8.2+ DataAvail column: bytesize, `N/A` for gateways), byte-exact."""
    healthy = [
        status_row("3ad2c1f0e9b8a7d6", "node-a1", "10.0.1.1:3901", ["a1"], avail=r.data_avail_cell(1234 * GB, 2 * TB)),
        status_row("77c0ffee12345678", "gw-1", "10.0.9.1:3901", capacity=None, avail="ignored for gateways"),
    ]
    assert r.render_status(V087, healthy, SAMPLE_FAILED[:1]) == (
        "==== HEALTHY NODES ====\n"
        "ID                Hostname  Address        Tags  Zone  Capacity  DataAvail\n"
        "3ad2c1f0e9b8a7d6  node-a1   10.0.1.1:3901  [a1]  dc1   1         1.2 TB (61.7%)\n"
        "77c0ffee12345678  gw-1      10.0.9.1:3901  []    dc1   gateway   N/A\n"
        "\n"
        "==== FAILED NODES ====\n"
        "ID                Hostname  Address        Tags  Zone  Capacity  Last seen\n"
        "c4c4c4c4c4c4c4c4  node-c1   10.0.3.1:3901  [c1]  dc3   1         2 minutes ago\n"
    )


def test_status_unreported_data_avail_is_question_mark():
    """late 3.1: DataAvail is `?` when the node has not reported its disk yet."""
    out = r.render_status(V087, [status_row("3ad2c1f0e9b8a7d6", "a", "b")], [])
    assert out.endswith("  ?\n")


# ----------------------------------------------------------------------------- layout show


def test_layout_show_sample_of_ref_2_8_sorted_by_id():
    """ref 2.8 sample: sorted by ID, tags comma-joined without brackets, may be empty."""
    roles = [
        r.LayoutRole("c4c4c4c4c4c4c4c4", ("c1",), "dc3", 1),
        r.LayoutRole("3ad2c1f0e9b8a7d6", ("a1",), "dc1", 1),
        r.LayoutRole("5b0e77aa01c2d3e4", (), "dc2", 1),
    ]
    assert r.render_layout_show(V080, roles, 4) == (
        "==== CURRENT CLUSTER LAYOUT ====\n"
        "ID                Tags  Zone  Capacity\n"
        "3ad2c1f0e9b8a7d6  a1    dc1   1\n"
        "5b0e77aa01c2d3e4        dc2   1\n"
        "c4c4c4c4c4c4c4c4  c1    dc3   1\n"
        "\n"
        "Current cluster layout version: 4\n"
    )


def test_layout_show_gateway_and_multiple_tags():
    """ref 2.8: capacity `gateway`, tags `t1,t2`."""
    out = r.render_layout_show(V087, [r.LayoutRole("77c0ffee12345678", ("t1", "t2"), "dc1", None)], 1)
    assert "77c0ffee12345678  t1,t2  dc1   gateway\n" in out


def test_layout_show_without_roles():
    """ref 2.8: two lines replace the table when no node has a role."""
    assert r.render_layout_show(V073, [], 0) == (
        "==== CURRENT CLUSTER LAYOUT ====\n"
        "No nodes currently have a role in the cluster.\n"
        "See `garage status` to view available nodes.\n"
        "\n"
        "Current cluster layout version: 0\n"
    )


# ----------------------------------------------------------------------------- stats

RING = tuple((i, 256) for i in IDS)
STORAGE = (
    r.StorageNode(IDS[0], "node-a1", "dc1", 1, 256, (1234 * GB, 2 * TB), (612 * 10**8, 100 * GB)),
    r.StorageNode(IDS[1], "node-b1", "dc2", 1, 256, (15 * 10**11, 2 * TB), (70 * GB, 100 * GB)),
    r.StorageNode(IDS[2], "?", "dc3", 1, 256, None, None),
)


def local_stats(gc=(0, 0, 0, 0, 0), items=None, rc=None, storage=STORAGE) -> r.LocalStats:
    tables = tuple(r.TableStats(n, items, items, 0, g) for n, g in zip(STATS_TABLES, gc))
    return r.LocalStats(tables, rc, 0, 0, RING, storage)


def plain_table_block(name: str, detailed: bool = False) -> str:
    head = f"\nTable stats for {name}\n"
    extra = "  number of items: 5\n  Merkle tree size: 5\n" if detailed else ""
    return head + extra + "  Merkle updater todo queue length: 0\n  GC todo queue length: 0\n"


STATS_080 = (
    "\n"
    f"Garage version: v0.8.0 [features: {FEATURES_RELEASE_08}]\n"
    "\n"
    "Database engine: Sled\n"
    "\n"
    "Ring nodes & partition count:\n"
    "  3ad2c1f0e9b8a7d6 256\n"
    "  5b0e77aa01c2d3e4 256\n"
    "  c4c4c4c4c4c4c4c4 256\n"
    + "".join(plain_table_block(t) for t in STATS_TABLES)
    + "\n"
    "Block manager stats:\n"
    "  resync queue length: 0\n"
    "  blocks with resync errors: 0\n"
    "\n"  # println! of a string ending with a newline: the sample's code block drops this line
)


def test_stats_sample_of_ref_2_10_for_0_8_0():
    """ref 2.10 sample (its `...same two lines...` written out), byte-exact."""
    assert r.render_stats(V080, local_stats(), False) == STATS_080


def test_stats_0_7_3_has_no_features_and_no_database_engine():
    """ref 2.10: v0.7.3 prints `Garage version: v0.7.3` and no `Database engine:` section."""
    expected = STATS_080.replace(f"v0.8.0 [features: {FEATURES_RELEASE_08}]", "v0.7.3")
    expected = expected.replace("\nDatabase engine: Sled\n", "")
    assert r.render_stats(V073, local_stats(), False) == expected


def test_stats_detailed_plain_adds_item_counts_and_rc_entries():
    """ref 2.10: -d adds `number of items`, `Merkle tree size` and the RC entries line first."""
    out = r.render_stats(V080, local_stats(items=5, rc=42), True)
    assert "".join(plain_table_block(t, detailed=True) for t in STATS_TABLES) in out
    assert out.endswith(
        "Block manager stats:\n"
        "  number of RC entries (~= number of blocks): 42\n"
        "  resync queue length: 0\n"
        "  blocks with resync errors: 0\n\n"
    )


STATS_087_LOCAL = f"""
Garage version: v0.8.7 [features: {FEATURES_RELEASE_08}]
Rust compiler version: 1.68.0

Database engine: Sled

Table stats:
  Table      Items  MklItems  MklTodo  GcTodo
  bucket_v2  NC     NC        0        0
  key        NC     NC        0        0
  object     NC     NC        0        0
  version    NC     NC        0        37
  block_ref  NC     NC        0        112

Block manager stats:
  number of RC entries (~= number of blocks): NC
  resync queue length: 0
  blocks with resync errors: 0

If values are missing above (marked as NC), consider adding the --detailed flag (this will be slow).
"""
STATS_087_STORAGE = """\
Storage nodes:
  ID                Hostname  Zone  Capacity  Part.  DataAvail              MetaAvail
  3ad2c1f0e9b8a7d6  node-a1   dc1   1         256    1.2 TB/2.0 TB (61.7%)  61.2 GB/100.0 GB (61.2%)
  5b0e77aa01c2d3e4  node-b1   dc2   1         256    1.5 TB/2.0 TB (75.0%)  70.0 GB/100.0 GB (70.0%)
  c4c4c4c4c4c4c4c4  ?         dc3   1         256    ?                      ?

Estimated available storage space cluster-wide (might be lower in practice):
  data: < 1.2 TB
  metadata: < 61.2 GB
A precise estimate could not be given as information is missing for some storage nodes.
"""
# late 2.1 sample: the local part, a blank line, the storage part, the final blank line.
STATS_087 = STATS_087_LOCAL + "\n" + STATS_087_STORAGE + "\n"


def test_stats_sample_of_late_2_1_for_0_8_7():
    """late 2.1 sample (NC on sled, hint, Rust line, Storage nodes, `< ` estimate), byte-exact."""
    assert r.render_stats(V087, local_stats(gc=(0, 0, 0, 37, 112)), False) == STATS_087


def test_stats_0_8_7_detailed_counts_everything_and_drops_hint():
    """late 2.1: -d replaces NC with counts and removes the hint line."""
    out = r.render_stats(V087, local_stats(items=7, rc=9, storage=STORAGE[:2]), True)
    assert "  object     7      7         0        0\n" in out
    assert "number of RC entries (~= number of blocks): 9\n" in out
    assert "NC" not in out and "--detailed" not in out


def test_stats_estimate_is_precise_when_every_node_reported():
    """late 2.1: min over nodes of (avail // partitions) * 256, no `< ` when nothing is missing."""
    out = r.render_stats(V087, local_stats(storage=STORAGE[:2]), False)
    assert out.endswith(
        "Estimated available storage space cluster-wide (might be lower in practice):\n"
        "  data: 1.2 TB\n  metadata: 61.2 GB\n\n"
    )


def test_stats_estimate_omitted_when_no_node_reported():
    """late 2.1: the estimate is printed only if some node reported both disks."""
    out = r.render_stats(V087, local_stats(storage=STORAGE[2:]), False)
    assert "Estimated" not in out and out.endswith("  c4c4c4c4c4c4c4c4  ?         dc3   1         256    ?          ?\n\n")


def test_stats_all_0_8_7_inlines_network_errors_and_ends_with_cluster_statistics():
    """late 2.2: per-node sections without the Storage part, inline error, Cluster statistics."""
    sections = [(IDS[0], local_stats(gc=(0, 0, 0, 37, 112))), (IDS[2], "Network error: Not connected: c4c4c4c4c4c4c4c4")]
    assert r.render_stats_all(V087, sections, STORAGE) == (
        "\n======================\nStats for node 3ad2c1f0e9b8a7d6:\n" + STATS_087_LOCAL + "\n"
        "\n======================\nStats for node c4c4c4c4c4c4c4c4:\nNetwork error: Not connected: c4c4c4c4c4c4c4c4\n"
        "\n======================\nCluster statistics:\n\n" + STATS_087_STORAGE + "\n"
    )


def test_stats_all_0_8_0_sections_have_no_cluster_block():
    """ref 2.10: -a prints each node's full text then an empty line; handler errors inline."""
    out = r.render_stats_all(V080, [(IDS[0], local_stats()), (IDS[1], "Error: boom")], STORAGE)
    assert out == (
        "\n======================\nStats for node 3ad2c1f0e9b8a7d6:\n" + STATS_080
        + "\n======================\nStats for node 5b0e77aa01c2d3e4:\nError: boom\n\n"
    )


# ----------------------------------------------------------------------------- workers

WORKERS_080 = [
    r.WorkerRow(1, "Job worker #0", "Idle"),
    r.WorkerRow(17, "Block resync worker #1", "Busy", info=("tranquility = 2, 5123 blocks in queue",)),
    r.WorkerRow(18, "Block resync worker #2", "Idle", info=("(unused)",)),
    r.WorkerRow(21, "Block scrub worker", "Busy", info=("12.34% done (tranquility = 4) ; corruptions detected: 0",)),
    r.WorkerRow(41, "object sync", "Busy", info=("14 partitions remaining",)),
    r.WorkerRow(44, "object GC", "Throttled", throttle_secs=1.5, errors=1, consecutive_errors=1,
                last_error_secs_ago=3.2, last_error="<error message>"),
    r.WorkerRow(52, "Block repair worker", "Done", info=("Phase 2: 100.00% done",)),
]


def test_worker_list_sample_of_ref_2_11_for_0_8_0():
    """ref 2.11 sample: headerless, Busy/Thr then Idle then Done by TID, info under Name + 2."""
    assert r.render_worker_list(V080, WORKERS_080, False, False) == (
        "17  Busy       Block resync worker #1\n"
        "                 tranquility = 2, 5123 blocks in queue\n"
        "21  Busy       Block scrub worker\n"
        "                 12.34% done (tranquility = 4) ; corruptions detected: 0\n"
        "41  Busy       object sync\n"
        "                 14 partitions remaining\n"
        "44  Thr:1.500  object GC\n"
        "                 1 consecutive errors (1 total), last 3 seconds ago\n"
        "                 <error message>\n"
        "1   Idle       Job worker #0\n"
        "18  Idle       Block resync worker #2\n"
        "                 (unused)\n"
        "52  Done       Block repair worker\n"
        "                 Phase 2: 100.00% done\n"
    )


def test_worker_list_0_8_0_filters_and_old_error_lines():
    """ref 2.11: -b keeps Busy/Thr; -e keeps errors > 0 and shows the message of old errors."""
    old = r.WorkerRow(30, "version GC", "Idle", errors=2, last_error_secs_ago=120, last_error="timeout")
    workers = WORKERS_080 + [old]
    assert [line.split()[0] for line in r.render_worker_list(V080, workers, True, False).splitlines()
            if not line.startswith(" ")] == ["17", "21", "41", "44"]
    assert "(2 errors, last 2 minutes ago)\n" in r.render_worker_list(V080, workers, False, False)
    assert "timeout" not in r.render_worker_list(V080, workers, False, False)
    assert r.render_worker_list(V080, workers, False, True).endswith(
        "30  Idle       version GC\n                 (2 errors, last 2 minutes ago)\n                 timeout\n")
    assert r.render_worker_list(V080, [WORKERS_080[0]], True, False) == ""


WORKERS_087 = [
    r.WorkerRow(43, "Version repair worker", "Done", progress="15234"),
    r.WorkerRow(42, "Block repair worker", "Done", progress="100.00%"),
    r.WorkerRow(32, "block_ref GC", "Idle", queue=112),
    r.WorkerRow(27, "version sync", "Throttled", throttle_secs=2.0, queue=201, errors=3, consecutive_errors=2,
                last_error_secs_ago=5, last_error="Sync failed with too many nodes"),
    r.WorkerRow(25, "bucket_object_counter queue", "Busy", queue=37),
    r.WorkerRow(19, "object sync", "Busy", queue=143),
    r.WorkerRow(9, "bucket_v2 queue", "Idle", queue=0),
    r.WorkerRow(5, "Block scrub worker", "Idle", tranq=4),
    r.WorkerRow(2, "Block resync worker #2", "Idle"),
    r.WorkerRow(1, "Block resync worker #1", "Busy", tranq=2, queue=4182),
]

WORKER_LIST_087 = """\
TID  State  Name                         Tranq  Done     Queue  Errors  Consec  Last
1    Busy   Block resync worker #1       2      -        4182   -       -
19   Busy   object sync                  -      -        143    -       -
25   Busy   bucket_object_counter queue  -      -        37     -       -
27   Busy*  version sync                 -      -        201    3       2       5 seconds ago
2    Idle   Block resync worker #2       -      -        -      -       -
5    Idle   Block scrub worker           4      -        -      -       -
9    Idle   bucket_v2 queue              -      -        0      -       -
32   Idle   block_ref GC                 -      -        112    -       -
42   Done   Block repair worker          -      100.00%  -      -       -
43   Done   Version repair worker        -      15234    -      -       -
"""


def test_worker_list_sample_of_late_1_1_for_0_8_7():
    """late 1.1 sample (9 columns, Busy*, `-` placeholders, sort order); trailing spaces aside."""
    assert rstrip_lines(r.render_worker_list(V087, WORKERS_087, False, False)) == WORKER_LIST_087


def test_worker_list_0_8_7_rows_without_error_time_keep_trailing_spaces():
    """late 1.1: when Last is empty the padded Consec cell is printed: trailing spaces."""
    lines = r.render_worker_list(V087, WORKERS_087, False, False).splitlines()
    assert lines[1] == "1    Busy   Block resync worker #1       2      -        4182   -       -       "
    assert lines[4].endswith("5 seconds ago")


def test_worker_list_0_8_7_filters():
    """late 1.1: -b keeps Busy/Busy*, -e keeps workers with errors; the header stays."""
    busy = r.render_worker_list(V087, WORKERS_087, True, False).splitlines()
    assert [line.split()[0] for line in busy] == ["TID", "1", "19", "25", "27"]
    assert [line.split()[0] for line in r.render_worker_list(V087, WORKERS_087, False, True).splitlines()] == ["TID", "27"]


def test_worker_info_sample_of_late_1_2():
    """late 1.2 sample (scrub worker, persistent errors, two message lines), byte-exact."""
    w = r.WorkerRow(5, "Block scrub worker", "Idle", tranq=4)
    messages = ("Last scrub completed at 1970-01-01T00:00:00.000Z", "Next scrub scheduled for 2024-04-09T07:21:44.517Z")
    assert r.render_worker_info(V087, w, messages, 0) == (
        "Task id:            5\n"
        "Worker name:        Block scrub worker\n"
        "Worker state:       Idle\n"
        "Tranquility:        4\n"
        "\n"
        "Total errors:       0\n"
        "Consecutive errs:   0\n"
        "\n"
        "Persistent errors:  0\n"
        "\n"
        "Message:            Last scrub completed at 1970-01-01T00:00:00.000Z\n"
        "                    Next scrub scheduled for 2024-04-09T07:21:44.517Z\n"
    )


def test_worker_info_throttled_with_error_and_no_third_block():
    """late 1.2: throttled state text, last error lines, a single blank line before Message."""
    w = r.WorkerRow(27, "version sync", "Throttled", throttle_secs=1.5, errors=3, consecutive_errors=2,
                    last_error_secs_ago=5, last_error="Sync failed")
    assert r.render_worker_info(V087, w, ("x",), None) == (
        "Task id:           27\n"
        "Worker name:       version sync\n"
        "Worker state:      Busy (throttled, paused for 1.500s)\n"
        "\n"
        "Total errors:      3\n"
        "Consecutive errs:  2\n"
        "Last error:        Sync failed\n"
        "Last error time:   5 seconds ago\n"
        "\n"
        "Message:           x\n"
    )


def test_worker_get_sample_of_late_1_3():
    """late 1.3 sample: headerless `<ID16>  <var>  <value>` table, byte-exact."""
    rows = [
        ("3ad2c1f0e9b8a7d6", "resync-tranquility", "2"),
        ("3ad2c1f0e9b8a7d6", "resync-worker-count", "1"),
        ("3ad2c1f0e9b8a7d6", "scrub-corruptions_detected", "0"),
        ("3ad2c1f0e9b8a7d6", "scrub-last-completed", "1970-01-01T00:00:00.000Z"),
        ("3ad2c1f0e9b8a7d6", "scrub-next-run", "2024-04-09T07:21:44.517Z"),
        ("3ad2c1f0e9b8a7d6", "scrub-tranquility", "4"),
    ]
    assert r.render_worker_vars(rows) == (
        "3ad2c1f0e9b8a7d6  resync-tranquility          2\n"
        "3ad2c1f0e9b8a7d6  resync-worker-count         1\n"
        "3ad2c1f0e9b8a7d6  scrub-corruptions_detected  0\n"
        "3ad2c1f0e9b8a7d6  scrub-last-completed        1970-01-01T00:00:00.000Z\n"
        "3ad2c1f0e9b8a7d6  scrub-next-run              2024-04-09T07:21:44.517Z\n"
        "3ad2c1f0e9b8a7d6  scrub-tranquility           4\n"
    )


def test_worker_set_0_8_0_one_line_replies():
    """ref 2.11 / late 1.3: 0.8.0 `worker set` replies."""
    assert [r.render_worker_set_legacy(v) for v in ("resync-n-workers", "scrub-tranquility", "resync-tranquility")] == [
        "Number of resync workers updated\n", "Scrub tranquility updated\n", "Resync tranquility updated\n"]


# ----------------------------------------------------------------------------- buckets

BUCKET_ID = "c0ffee" + "0" * 58
BUCKET = r.BucketInfo(
    id64=BUCKET_ID, global_aliases=("photos", "backup"), local_aliases=(),
    keys=(("RW ", "GK1111", "app"), ("R  ", "GK0000", "reader"), ("   ", "GK2222", "nothing")),
    website=False, objects=1234, bytes=1288490189, unfinished_uploads=0,
)


def test_bucket_info_0_8_0_size_objects_and_tables():
    """ref 2.13: size/objects block after `Bucket:`, sorted aliases, key table with blank flags."""
    assert r.render_bucket_info(V080, BUCKET) == (
        f"Bucket: {BUCKET_ID}\n"
        "\n"
        "Size: 1.2 GiB (1.3 GB)\n"
        "Objects: 1234\n"
        "Unfinished multipart uploads: 0\n"
        "\n"
        "Website access: false\n"
        "\n"
        "Global aliases:\n"
        "  backup\n"
        "  photos\n"
        "\n"
        "Key-specific aliases:\n"
        "\n"
        "Authorized keys:\n"
        "  R    GK0000  reader\n"
        "  RW   GK1111  app\n"
    )


def test_bucket_info_0_7_3_has_no_size_or_object_lines():
    """ref 2.13 / checklist 8: v0.7.3 goes from `Bucket:` straight to `Website access:`."""
    out = r.render_bucket_info(V073, BUCKET)
    assert out.startswith(f"Bucket: {BUCKET_ID}\nWebsite access: false\n\nGlobal aliases:\n")
    assert "Size" not in out and "Objects" not in out


def test_bucket_info_negative_counters_print_negative_objects_and_huge_size():
    """ref 2.13 / 7: uninitialised counters go negative; bytes are cast to u64 before bytesize."""
    out = r.render_bucket_info(V087, replace(BUCKET, objects=-3, bytes=-1, website=True))
    assert "Size: 16.0 EiB (18.4 EB)\nObjects: -3\n" in out
    assert "Website access: true\n" in out


def test_bucket_info_quotas_block():
    """ref 2.13: `Quotas:` with one-space-indented lines, after Website access."""
    out = r.render_bucket_info(V080, replace(BUCKET, quota_max_size=10 * 2**30, quota_max_objects=1000))
    assert "Website access: false\n\nQuotas:\n maximum size: 10.0 GiB (10.7 GB)\n maximum number of objects: 1000\n\nGlobal" in out


def test_bucket_info_key_specific_aliases_row_layout_is_a_guess():
    """ref 2.13 gives no row layout for Key-specific aliases: `<key id> (<key name>)  <alias>` is a guess."""
    out = r.render_bucket_info(V080, replace(BUCKET, local_aliases=(("GK1111", "mine"), ("GK9", "other-name", "x"))))
    assert "Key-specific aliases:\n  GK1111 (app)      mine\n  GK9 (other-name)  x\n" in out


def test_bucket_list_format_is_a_guess():
    """No reference sample: `print_bucket_list` rows (aliases, local alias cell, ID64), from memory."""
    out = r.render_bucket_list(V080, [(("photos", "old-photos"), "ab" * 32), ((), "cd" * 32), (("a",), "ef" * 32)])
    assert out == (
        "List of buckets:\n"
        "  photos,old-photos    " + "ab" * 32 + "\n"
        "                       " + "cd" * 32 + "\n"
        "  a                    " + "ef" * 32 + "\n"
    )


# ----------------------------------------------------------------------------- logs, panics

EPOCH = 1669039533.123456  # 2022-11-21T14:05:33.123456Z


def test_log_line_0_8_matches_checklist_sample_once_colours_are_removed():
    """ref 13 item 16: `2022-11-21T14:05:33.123456Z  INFO garage::repair::online: ...`."""
    line = r.log_line(V080, "INFO", "garage::repair::online", "Launching a full sync of tables", EPOCH, {})
    assert ANSI.sub("", line) == "2022-11-21T14:05:33.123456Z  INFO garage::repair::online: Launching a full sync of tables\n"


def test_log_line_0_8_always_has_tracing_subscriber_colours():
    """ref 1 (ANSI always on) with tracing-subscriber 0.3 styles [inf]: dim time/target, coloured level."""
    line = r.log_line(V087, "warn", "garage", "x", EPOCH, {})
    assert line == "\x1b[2m2022-11-21T14:05:33.123456Z\x1b[0m \x1b[33m WARN\x1b[0m \x1b[2mgarage\x1b[0m\x1b[2m:\x1b[0m x\n"


def test_log_line_0_7_3_pads_target_to_longest_seen_so_far():
    """ref 13 item 16: pretty_env_logger ` INFO  garage::repair > msg`, width kept in `state`."""
    state: dict = {}
    lines = [r.log_line(V073, lvl, tgt, "m", EPOCH, state) for lvl, tgt in
             (("INFO", "garage::repair"), ("WARN", "garage_table::sync"), ("ERROR", "garage"))]
    assert lines == [" INFO  garage::repair > m\n", " WARN  garage_table::sync > m\n", " ERROR garage             > m\n"]
    assert state == {"max_target_width": len("garage_table::sync")}


def test_panic_banner_0_8_structure():
    """ref 2.2: banner, `panicked at`, explanation, GARAGE VERSION (with features), BACKTRACE."""
    out = r.panic_banner(V080, "Unable to open sled DB", "src/model/garage.rs:98:14")
    lines = out.splitlines()
    assert lines[:2] == ["======== PANIC (internal Garage error) ========",
                         "panicked at 'Unable to open sled DB', src/model/garage.rs:98:14"]
    assert f"\nGARAGE VERSION: v0.8.0 [features: {FEATURES_RELEASE_08}]\n\nBACKTRACE:\n" in out
    assert out.endswith("\n")


def test_panic_0_7_3_server_logs_error_and_other_commands_use_rust_default():
    """ref 2.2: 0.7.3 hooks only `server` (ERROR log); other commands print Rust's default text."""
    assert r.panic_banner(V073, "m", "src/garage/server.rs:40:10", server=True) == (
        " ERROR garage > panicked at 'm', src/garage/server.rs:40:10\n")
    assert r.panic_banner(V073, "m", "f.rs:1:2").startswith("thread 'main' panicked at 'm', f.rs:1:2\n")


# ----------------------------------------------------------------------------- /metrics


@pytest.mark.parametrize("value, text", [(1.0, "1"), (4182.0, "4182"), (0.25, "0.25"), (1e-7, "0.0000001"),
                                         (1e21, "1000000000000000000000"), (float("inf"), "inf"), (float("nan"), "NaN")])
def test_format_float_is_rust_f64_display(value, text):
    """ref 4.2 (prometheus crate encoder prints f64 Display): no `.0`, no exponent."""
    assert r.format_float(value) == text


def test_exposition_counters_and_gauges():
    """ref 4.2: HELP/TYPE, no `_total`, families by name, series by label values, labels sorted."""
    fams = [
        r.MetricFamily("table_merkle_updater_todo_queue_length", "Merkle tree updater TODO queue length", "gauge",
                       [({"table_name": "object"}, 3.0), ({"table_name": "key"}, 0.0)]),
        r.MetricFamily("api_s3_request_counter", "", "counter",
                       [({"api_endpoint": "GetObject", "a": 'q"\\'}, 2.0)]),
        r.MetricFamily("empty_family", "never observed", "counter", []),
    ]
    assert r.render_exposition(V080, fams) == (
        "# TYPE api_s3_request_counter counter\n"
        'api_s3_request_counter{a="q\\"\\\\",api_endpoint="GetObject"} 2\n'
        "# HELP table_merkle_updater_todo_queue_length Merkle tree updater TODO queue length\n"
        "# TYPE table_merkle_updater_todo_queue_length gauge\n"
        'table_merkle_updater_todo_queue_length{table_name="key"} 0\n'
        'table_merkle_updater_todo_queue_length{table_name="object"} 3\n'
    )


def test_exposition_histogram_old_buckets_from_raw_observations():
    """ref 4.2: le 0.5/0.9/0.99/+Inf, _sum, _count; a value equal to a bound goes up [dep-inf]."""
    fam = r.MetricFamily("rpc_duration", "Duration of RPCs", "histogram", [({"rpc_endpoint": "x"}, [0.1, 0.5, 2.0])])
    assert r.render_exposition(V080, [fam]) == (
        "# HELP rpc_duration Duration of RPCs\n"
        "# TYPE rpc_duration histogram\n"
        'rpc_duration_bucket{rpc_endpoint="x",le="0.5"} 1\n'
        'rpc_duration_bucket{rpc_endpoint="x",le="0.9"} 2\n'
        'rpc_duration_bucket{rpc_endpoint="x",le="0.99"} 2\n'
        'rpc_duration_bucket{rpc_endpoint="x",le="+Inf"} 3\n'
        'rpc_duration_sum{rpc_endpoint="x"} 2.6\n'
        'rpc_duration_count{rpc_endpoint="x"} 3\n'
    )


def test_exposition_histogram_new_buckets_of_0_8_5():
    """late 5: 33 finite buckets from 0.8.5 (1.0 prints as `1`), plus +Inf."""
    fam = r.MetricFamily("block_resync_duration", "d", "histogram", [({}, [0.004])])
    lines = r.render_exposition(V087, [fam]).splitlines()
    buckets = [line for line in lines if "_bucket" in line]
    assert len(buckets) == 34
    assert 'block_resync_duration_bucket{le="0.003"} 0' in buckets and 'block_resync_duration_bucket{le="0.005"} 1' in buckets
    assert 'block_resync_duration_bucket{le="1"} 1' in buckets and buckets[-1] == 'block_resync_duration_bucket{le="+Inf"} 1'


def test_exposition_accepts_precomputed_histogram_sample():
    """ref 4.2: a HistogramSample's cumulative counts are printed as given."""
    h = r.HistogramSample((("0.5", 4), ("0.9", 5), ("0.99", 5)), 1.5, 6)
    out = r.render_exposition(V073, [r.MetricFamily("web_request_duration", "", "histogram", [({}, h)])])
    assert out.splitlines()[-3:] == ['web_request_duration_bucket{le="+Inf"} 6', "web_request_duration_sum 1.5",
                                     "web_request_duration_count 6"]
