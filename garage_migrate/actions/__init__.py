"""What each step of a plan does on the nodes, as values: the one place a step's commands come from.

The planner (:mod:`garage_migrate.plan`) puts these values into every step of the plan, the
steps (:mod:`garage_migrate.steps`, :mod:`garage_migrate.backup_step`) take the very same
values from the same builders when they run, and the executor refuses any changing command a
step tries that its plan step does not list (:func:`garage_migrate.journal.in_step`). So what
the dry run prints and a person approves is what runs, byte for byte.

An action is a :class:`~garage_migrate.commands.RemoteCommand` (``kind`` ``observe`` or
``act``) or an :class:`Upload` (always an ``act``), bound to a node by :class:`NodeAction`.
Observations are listed once each, whatever number of times a step polls them; acts are
listed in the order they run. A step observes before it acts, so a re-run may skip some of its
acts (the node is already in the wanted state), never run one the plan does not list.
"""

from .backup import (BACKUP_MIN_RATE, BACKUP_TIMEOUT_FLOOR, BackupActions, RestoreActions, RestorePaths, backup,
                     backup_timeout, for_node_backup, on_node_temp, restore, restore_paths, size_timeout)
from .node import (ApiActions, ConfigActions, NodeSpec, OfflineRepairActions, Probes, StageActions, StartActions, StopActions,
                   SwitchActions, config_stage, config_switch, cut_config_path, gate_command, kept_config_path,
                   offline_repair, original_config_path, preflight, read_original, repair, set_api, spec, stage,
                   staged_config_path, staged_path, start, stop, switch)
from .values import (OFFLINE_REPAIR_TIMEOUT, SERVICE_STOP_TIMEOUT, START_TIMEOUT, STOP_TIMEOUT, LocalStream, NodeAction,
                     Op, Upload, bind)

__all__ = ["BACKUP_MIN_RATE", "BACKUP_TIMEOUT_FLOOR", "OFFLINE_REPAIR_TIMEOUT", "SERVICE_STOP_TIMEOUT", "START_TIMEOUT",
           "STOP_TIMEOUT", "ApiActions", "BackupActions", "ConfigActions", "LocalStream", "NodeAction", "NodeSpec", "OfflineRepairActions",
           "Op", "Probes", "RestoreActions", "RestorePaths", "StageActions", "StartActions", "StopActions",
           "SwitchActions", "Upload", "backup", "backup_timeout", "bind", "config_stage", "config_switch", "cut_config_path", "for_node_backup",
           "gate_command", "kept_config_path", "offline_repair", "on_node_temp", "original_config_path", "preflight", "read_original",
           "repair", "restore", "restore_paths", "set_api", "size_timeout", "spec", "stage", "staged_config_path", "staged_path", "start",
           "stop", "switch"]
