"""The header every benchmark record under ``bench/`` starts with: when, the command, the machine, the config."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from pathlib import Path
from typing import Sequence

import torch


def record_header(*, repo: Path, config: str, argv: Sequence[str] | None = None) -> dict:
    """Date, the command that reproduces the record (paths relative to ``repo``), machine and threads
    (with the load average, since a shared machine skews timings), and the config used."""
    script = Path(sys.argv[0]).resolve()
    script_name = str(script.relative_to(repo)) if script.is_relative_to(repo) else str(script)
    cfg = Path(config).resolve()
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python " + " ".join([script_name, *(argv or sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "config": str(cfg.relative_to(repo)) if cfg.is_relative_to(repo) else config,
    }
