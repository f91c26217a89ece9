"""Early stopping on a watched loss: the rule the encoder distillation and the LTV model share.

After each epoch the caller reports the watched (validation) loss. The loss improves when it is
below the best so far by more than ``min_delta``; the model's state is then kept (``state()`` is
called only then: a deep copy costs what the model weighs). ``patience`` epochs in a row without
improvement stop the training. A loss that is NaN never improves.
"""

from __future__ import annotations

from typing import Any, Callable


class EarlyStopping:
    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss = float("inf")
        self.best_epoch = 0  # 1-based; 0 until a loss improves
        self.best_state: Any = None
        self.epochs = 0
        self.stale = 0

    def step(self, loss: float, state: Callable[[], Any]) -> bool:
        """Record one epoch's watched loss; True when training should stop."""
        self.epochs += 1
        if loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch, self.stale = float(loss), self.epochs, 0
            self.best_state = state()
        else:
            self.stale += 1
        return self.stale >= self.patience
