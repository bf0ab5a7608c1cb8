"""The ``GarageCluster`` block: a cluster's inventory and the secrets it refers to, kept in Prefect.

A deployment's ``inventory`` parameter is either a path on the worker or this block. The block
holds the inventory (a path, or the YAML itself pasted into the block) and, as ``SecretStr``
(shown masked in the UI, never logged), the secrets the inventory only names:

- ``secret_env``: environment variables the inventory refers to by name (e.g. the one its
  ``prometheus.bearer_token_env`` names), set for the duration of the run in the flow run's
  process and restored afterwards;
- ``ssh_private_key``: the private key the nodes accept, written to a file only the run's user
  can read (removed afterwards) and used instead of the inventory's ``ssh.key_file``.

Register the type once per Prefect server: ``prefect block register -m flows.blocks``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator

from garage_migrate.inventory import Inventory, load_inventory, parse_inventory


class GarageCluster(Block):
    """A Garage cluster to migrate: its inventory (a path on the worker or the YAML itself) and
    the secrets the inventory names."""

    _block_type_name = "Garage Cluster"
    _block_type_slug = "garage-cluster"
    _description = ("The inventory of a Garage cluster (a path on the worker, or the YAML itself) and the "
                    "secrets it names, for the garage-migrate deployments.")

    inventory_path: str | None = Field(
        None, title="Inventory path", description="Path of the inventory YAML on the worker (or leave empty and "
                                                  "paste the inventory below).")
    inventory_yaml: str | None = Field(
        None, title="Inventory YAML", description="The inventory itself, as YAML (instead of a path).")
    secret_env: dict[str, SecretStr] = Field(
        default_factory=dict, title="Secret environment variables",
        description="Variables the inventory names (such as its prometheus bearer_token_env), set only in the "
                    "flow run's process while it runs.")
    ssh_private_key: SecretStr | None = Field(
        None, title="SSH private key", description="The private key the nodes accept (OpenSSH format); used "
                                                   "instead of the inventory's ssh key_file.")

    @model_validator(mode="after")
    def _one_inventory(self) -> GarageCluster:
        if bool(self.inventory_path) == bool(self.inventory_yaml):
            raise ValueError("give exactly one of inventory_path and inventory_yaml")
        return self

    def parse(self) -> Inventory:
        """The inventory, validated (from the path, or from the pasted YAML).

        Raises:
            InventoryError: unreadable or invalid, with the field and line.
        """
        if self.inventory_path:
            return load_inventory(self.inventory_path)
        name = self._block_document_name or "block"
        return parse_inventory(self.inventory_yaml or "", source=f"GarageCluster {name}")

    @contextlib.contextmanager
    def opened(self) -> Iterator[Inventory]:
        """The inventory, with this block's secrets in place while the context lasts."""
        inv = self.parse()
        saved = {k: os.environ.get(k) for k in self.secret_env}
        key_dir = None
        try:
            os.environ.update({k: v.get_secret_value() for k, v in self.secret_env.items()})
            if self.ssh_private_key is not None:
                key_dir = tempfile.TemporaryDirectory(prefix="garage-migrate-key-")  # mode 0700
                key = Path(key_dir.name) / "id"
                key.touch(mode=0o600)
                key.write_text(self.ssh_private_key.get_secret_value().strip() + "\n")
                inv = inv.model_copy(update={"ssh": inv.ssh.model_copy(update={"key_file": key})})
            yield inv
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            if key_dir is not None:
                key_dir.cleanup()


@contextlib.contextmanager
def inventory_of(inventory: str | GarageCluster) -> Iterator[str | Inventory]:
    """What :func:`garage_migrate.runtime.open_runtime` takes, from a flow's ``inventory``
    parameter: a path as it is, a block's inventory with its secrets in place meanwhile."""
    if isinstance(inventory, GarageCluster):
        with inventory.opened() as inv:
            yield inv
    else:
        yield inventory
