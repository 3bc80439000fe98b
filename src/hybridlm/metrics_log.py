"""A run's record as it happens: metrics.jsonl (one flushed JSON line per logged step), an optional
TensorBoard sink, and loss.png at the end.

A resumed run first drops the lines past its checkpoint's step, so the file reads as if the run had
never stopped.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from .config import ConfigError

log = logging.getLogger(__name__)


class MetricsLog:
    """Append-only metrics of one run directory (or nothing, when there is none)."""

    def __init__(self, path: Path | None, resume_step: int = 0, tensorboard_dir: Path | None = None):
        self.path = path
        self.handle = None
        self.writer = None
        if path is None:
            return
        kept = [line for line in read_metrics(path) if line["step"] <= resume_step] if resume_step else []
        with path.open("w") as handle:
            handle.writelines(json.dumps(line) + "\n" for line in kept)
        self.handle = path.open("a", buffering=1)
        if tensorboard_dir is not None:
            self.writer = tensorboard_writer(tensorboard_dir)

    def write(self, record: dict) -> None:
        if self.handle is None:
            return
        self.handle.write(json.dumps(_finite_or_str(record)) + "\n")
        self.handle.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_metrics(path) -> list[dict]:
    """The records of a metrics.jsonl file (an absent file has none; a torn last line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def tensorboard_writer(directory: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'hybridlm[tensorboard]'") from None
    return SummaryWriter(log_dir=str(directory))


def plot_loss(records: list[dict], path: Path) -> Path | None:
    """Training loss (and held-out loss where measured) against step; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no %s", path.name)
        return None
    steps = [r["step"] for r in records if isinstance(r.get("loss"), float)]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(steps, [r["loss"] for r in records if isinstance(r.get("loss"), float)], label="train loss")
    evaluated = [r for r in records if isinstance(r.get("eval_loss"), float)]
    if evaluated:
        axis.plot([r["step"] for r in evaluated], [r["eval_loss"] for r in evaluated], "o-", label="held-out loss")
    axis.set_xlabel("step")
    axis.set_ylabel("loss (nats/token)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _finite_or_str(record: dict) -> dict:
    """Strict JSON: a non-finite float is written as its name ("nan", "inf")."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
