"""Every text the simulated Garage prints, as pure functions of plain data.

Standard library only: this module is imported by the simulated daemon and CLI, which must start
fast. Each function returns the exact text Garage writes, including its trailing newline, so a
caller only has to ``write()`` it. Formats differ between versions; they are selected with the
flags of :class:`~garage_lab.garage.personality.Personality`, never by comparing versions.

References: ``garage-0.7-to-0.8.md`` (cited as "ref") and ``garage-0.8-late.md`` (cited as
"late"). Where the text had to be reconstructed beyond those references, the docstring or a
comment says so with "[guess]" or "[inf]".

The texts are grouped by command family, one module each: :mod:`.text` (building blocks),
:mod:`.cluster`, :mod:`.stats`, :mod:`.workers`, :mod:`.buckets`, :mod:`.logs`, :mod:`.metrics`.
Every name stays importable from here (``render.render_status`` ...).
"""

from __future__ import annotations

from .text import (  # noqa: F401
    _LN_1000,
    _LN_1024,
    _TIMEAGO_UNITS,
    _avail_cell,
    _capacity,
    _f32,
    _tags,
    _timeago_amount,
    bytesize,
    data_avail_cell,
    format_table,
    timeago,
    timeago_future,
)
from .cluster import (  # noqa: F401
    LayoutRole,
    StatusRow,
    _STATUS_HEADER,
    _last_seen,
    _role_cells,
    render_layout_show,
    render_status,
)
from .stats import (  # noqa: F401
    LocalStats,
    StorageNode,
    TableStats,
    _cluster_stats,
    _nc,
    _stats_header,
    _stats_local,
    _stats_plain,
    _stats_tabular,
    render_stats,
    render_stats_all,
)
from .workers import (  # noqa: F401
    WorkerRow,
    _STATE_RANK,
    _WORKER_SET_REPLIES,
    _dash,
    _listed_workers,
    _state_cell,
    render_worker_info,
    render_worker_list,
    render_worker_set_legacy,
    render_worker_vars,
)
from .buckets import (  # noqa: F401
    BucketInfo,
    _both_sizes,
    render_bucket_info,
    render_bucket_list,
)
from .logs import (  # noqa: F401
    _ENV_LOGGER_LEVELS,
    _FAKE_BACKTRACE,
    _PANIC_EXPLANATION,
    _TRACING_LEVELS,
    _level,
    log_line,
    panic_banner,
    rfc3339_micros,
)
from .metrics import (  # noqa: F401
    HistogramSample,
    MetricFamily,
    _escape,
    _labels,
    _series_order,
    format_float,
    render_exposition,
)
