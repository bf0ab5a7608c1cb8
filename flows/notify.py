"""Set up the notifications of ``deployments/automations.yaml``: a webhook block, and a copy of
the automations file that names it, for ``prefect automation create --from-file``.

    python -m flows.notify --webhook-url URL [--block NAME] [--out FILE]

The file references the block by id (Prefect's ``call-webhook`` action takes nothing else),
which only exists once the block is saved: this writes the block (or updates it) and the copy
with ``WEBHOOK_BLOCK_ID`` replaced, then prints the command that creates the automations.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deployments" / "automations.yaml"
PLACEHOLDER = "WEBHOOK_BLOCK_ID"


def render_automations(block_id: str, template: Path = TEMPLATE) -> str:
    """The automations file with the webhook block's id in place of ``WEBHOOK_BLOCK_ID``."""
    text = template.read_text()
    if PLACEHOLDER not in text:
        raise ValueError(f"{template} has no {PLACEHOLDER} to replace")
    return text.replace(PLACEHOLDER, str(block_id))


def save_webhook(url: str, name: str = "garage-migrate-notify") -> str:
    """Save (or overwrite) the Webhook block ``name`` posting to ``url``; returns its id."""
    from prefect.blocks.webhook import Webhook

    return str(Webhook(url=url, method="POST", headers={"Content-Type": "application/json"}).save(name, overwrite=True))


def main(argv: list[str] | None = None) -> int:
    """Entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m flows.notify", description=__doc__.split("\n")[0])
    ap.add_argument("--webhook-url", required=True, help="where the automations POST their JSON")
    ap.add_argument("--block", default="garage-migrate-notify", help="the Webhook block's name")
    ap.add_argument("--out", default=str(TEMPLATE.with_name("automations.local.yaml")))
    args = ap.parse_args(argv)
    block_id = save_webhook(args.webhook_url, args.block)
    Path(args.out).write_text(render_automations(block_id))
    print(f"webhook block {args.block} ({block_id}) saved; automations written to {args.out}. Create them with:\n"
          f"  prefect automation create --from-file {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
