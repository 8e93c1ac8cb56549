"""The one rule for a run's best epoch, read by the checkpoints, the driver, the plots and sweeps.

An epoch's metrics (a checkpoint's saved metrics or a metrics.jsonl record) are ranked by the
accuracy of the set that chooses: the validation set where the run holds one out (--validation N),
else the test set, as the lab chose. The higher accuracy wins; on a tie the earlier epoch stays
best, as the lab's "acc > best". No JAX here: a sweep's table reads it without starting JAX.
"""

from __future__ import annotations

from typing import Any


def chosen_by(metrics: dict[str, Any]) -> tuple[str, float]:
    """("validation" or "test", the accuracy in percent that ranks this epoch)."""
    if "val_accuracy" in metrics:
        return "validation", metrics["val_accuracy"]
    return "test", metrics["test_accuracy"]


def rank(metrics: dict[str, Any]) -> tuple[float, int]:
    """The key the best epoch maximizes: the choosing set's accuracy, then the earlier step."""
    return chosen_by(metrics)[1], -metrics["step"]
