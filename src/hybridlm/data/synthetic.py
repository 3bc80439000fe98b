"""Synthetic tasks that separate recall (attention) from compression (SSMs), by name.

Every batch is a pure function of (task settings, seed, batch index): training resumes exactly and
train/test never overlap (test batches use a different seed stream). Targets are -100 where no
answer is asked, so loss and accuracy count only the answers. One file per family: recall.py
(MQAR, induction), copying.py (selective copy, fixed-offset lag), retrieval.py (passkey, phonebook).
"""

from __future__ import annotations

from ..config import ConfigError, nearest
from .batch import IGNORE, NO_SOURCE, Batch, batch_generator, build_task
from .copying import Lag, SelectiveCopy
from .recall import MQAR, InductionHeads
from .retrieval import Passkey, Phonebook

__all__ = [
    "IGNORE",
    "NO_SOURCE",
    "TASKS",
    "Batch",
    "InductionHeads",
    "Lag",
    "MQAR",
    "Passkey",
    "Phonebook",
    "SelectiveCopy",
    "batch_generator",
    "make_task",
]

TASKS = {
    "mqar": MQAR,
    "passkey": Passkey,
    "phonebook": Phonebook,
    "copy": SelectiveCopy,
    "induction": InductionHeads,
    "lag": Lag,
}


def make_task(name: str, **settings):
    """A task by name with its settings; unknown names or settings and out-of-range values raise a
    one-line ConfigError naming the task's fields (with the nearest one) or the allowed range."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}{nearest(name, TASKS)} (tasks: {', '.join(TASKS)}, or text)")
    return build_task(name, TASKS[name], settings)
