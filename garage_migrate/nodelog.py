"""The per-node log prefix shared by every component: ``[<node>] message``, ``extra={"node": ...}``."""

from __future__ import annotations

import logging


class NodeLog(logging.LoggerAdapter):
    """A logger adapter that puts ``[<node>]`` in front of each line and the node in ``extra``."""

    def process(self, msg, kwargs):
        """Prefix the message and record the node (see :class:`logging.LoggerAdapter`)."""
        kwargs.setdefault("extra", {})["node"] = self.extra["node"]
        return f"[{self.extra['node']}] {msg}", kwargs


def node_log(logger: logging.Logger, node: str) -> NodeLog:
    """``logger`` with the ``[<node>]`` prefix (see :class:`NodeLog`)."""
    return NodeLog(logger, {"node": node})
