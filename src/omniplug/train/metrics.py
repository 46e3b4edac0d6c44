"""Per-step metrics: ``output_dir/metrics.csv``, TensorBoard when installed, a loss-curve PNG.

Only rank 0 writes. Loss values are written with ``repr`` (shortest exact round trip), so two
runs can be compared bit for bit from their CSVs. Loss terms (``lm_loss``, ``seg/bce``, ...)
appear as columns the first time they occur; the file is rewritten with the wider header then.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path
from typing import Any

FIXED = ["step", "epoch", "lr", "loss", "grad_norm", "skipped", "seconds"]


class MetricsLog:
    def __init__(self, output_dir: str | Path, *, enabled: bool, resume_step: int | None) -> None:
        self.path = Path(output_dir) / "metrics.csv"
        self.enabled = enabled
        self.columns = list(FIXED)
        self.rows: list[dict[str, str]] = []
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            # rows after the checkpoint belong to the interrupted run: the resumed run redoes them
            with open(self.path, newline="") as fh:
                reader = csv.DictReader(fh)
                self.columns = list(reader.fieldnames or FIXED)
                self.rows = [r for r in reader if int(r["step"]) <= resume_step]
        evals = self.path.parent / "eval_metrics.jsonl"
        if resume_step is not None and evals.is_file():  # validations after the checkpoint are redone too
            kept = [line for line in evals.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= resume_step]
            evals.write_text("".join(line + "\n" for line in kept))
        self._rewrite()
        self._tb = _tensorboard(Path(output_dir) / "tensorboard")

    def log(self, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {k: _fmt(v) for k, v in values.items()}
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns.extend(new)
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as fh:
                csv.DictWriter(fh, self.columns).writerow(row)
        if self._tb is not None:
            step = int(values["step"])
            for key, value in values.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"train/{key}", value, step)

    def log_eval(self, step: int, values: dict[str, float]) -> None:
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"eval/{key}", value, step)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()

    def losses(self) -> list[tuple[int, float]]:
        """(step, loss) of every step that was not skipped."""
        return [(int(r["step"]), float(r["loss"])) for r in self.rows if r.get("skipped") in ("0", "False", "")]

    def plot(self, path: str | Path) -> Path | None:
        """Loss (and each loss term) against step, to a PNG."""
        if not self.enabled or not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        terms = [c for c in self.columns if c not in FIXED and c != "epoch"]
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        for name in ["loss", *terms]:
            points = [(int(r["step"]), float(r[name])) for r in self.rows
                      if r.get(name) not in (None, "") and r.get("skipped") == "0" and math.isfinite(float(r[name]))]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=name, linewidth=1.5 if name == "loss" else 0.8)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
        plt.close(fig)
        return path


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _tensorboard(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    try:
        return SummaryWriter(log_dir=str(log_dir))
    except Exception as exc:  # a broken install should not stop training
        warnings.warn(f"TensorBoard disabled: {exc}", stacklevel=2)
        return None
