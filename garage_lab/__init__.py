"""garage_lab: a simulated Garage 0.7.3 / 0.8.0 / 0.8.7 cluster on real OpenSSH and real Prometheus.

The lab is product, not test scaffolding: the demo, the end-to-end tests and the benchmarks run
on it. Its behaviour follows ``shared/reference/garage-0.7-to-0.8.md`` and
``shared/reference/garage-0.8-late.md``; where those are unsure, the code says so.

The ``garage_lab.garage`` subpackage (daemon + CLI) uses the standard library only, so that a
node starts fast and small; the harness may use more.
"""
