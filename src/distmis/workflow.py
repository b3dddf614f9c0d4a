"""What every ``workflow_scripts/*.py`` does first: send stderr and logging to the rule's log."""

from __future__ import annotations

import logging
import sys
from typing import Any


def start_script(snakemake: Any) -> None:
    """Redirect stderr (tracebacks, TensorFlow/Ray chatter) and logging to ``log[0]``."""
    if snakemake.log:
        sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: SIM115 - lives as long as the job
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
