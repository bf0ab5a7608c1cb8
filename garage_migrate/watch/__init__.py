"""The post-migration watch: a baseline before the first disruptive step, then observations
compared with it for hours (issue 11 §4).

- :mod:`.model`: the typed :class:`~.model.Snapshot` (the baseline is one, kept in the ledger);
- :mod:`.compare`: the pure comparison and what counts as a regression;
- :mod:`.observe`: taking a snapshot (Prometheus and the CLI);
- :mod:`.report`: the markdown;
- :mod:`.run`: one observation (the Prefect watch flow runs one per scheduled run) and the
  foreground loop of ``garage-migrate watch``.

Nothing is imported here: the ledger's model imports :mod:`.model` alone.
"""
