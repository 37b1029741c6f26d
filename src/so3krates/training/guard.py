"""Divergence guard: when training has diverged, and which state it goes back to.

Two signals, both against ``factor`` (``training.divergence_factor``):

- the validation loss of the EMA weights above ``factor`` x the best validation loss;
- the mean training loss of the raw parameters over the interval since the last validation
  non-finite, or above ``factor`` x the lowest interval mean so far.

The EMA lags the raw parameters by about ``1 / (1 - ema_decay)`` steps, so it can still
validate well while the raw parameters are wrecked: in a 30-minute aspirin run the raw
network's activations had grown to 1e25 (and the training losses to 1e10-1e15) while the EMA
weights validated at 47 meV/Å, and a guard that judged only the validation kept returning to
those raw parameters. The training loss sees them at once.

The state to return to is one that has proven itself: a state validated without either signal
is a *candidate*, and becomes the *good* state only when the interval trained from it was
healthy as well, since a state wrecked by the last step before a validation shows only in the
next interval's losses. The state at the start of a run (validated before any step) is good
without that proof: there is nothing older to go back to. A resumed run starts with no good
state (the guard is not checkpointed) and proves one as above.

A guard must not loop: when the validations right after rolling back to the same state keep
showing a divergence (``MAX_ROLLBACKS`` times in a row), the reference it judges them
against is out of reach — a lucky low validation loss, say, in a noisy run (a tantalum run
rolled back 96 times, the learning rate halved to 1e-30). The guard then takes the current
validation loss as its reference and training goes on.
"""

from __future__ import annotations

import math
from typing import Any

MAX_ROLLBACKS = 3  # consecutive rollbacks after which the guard re-bases its reference


class DivergenceGuard:
    """Decide at every validation whether training diverged; keep the state to return to.

    Args:
        factor: a loss above this multiple of the best one is a divergence; None or 0
            disables the guard (:meth:`validate` then always returns None).
    """

    def __init__(self, factor: float | None):
        self.factor = factor
        self.best_train_loss = math.inf
        self.good: Any = None
        self.candidate: Any = None
        self.rollbacks = 0  # consecutive rollbacks
        self.reference = 0.0  # a validation loss below which the best one is not taken

    def diverged(self, valid_loss: float, best_valid_loss: float, train_loss: float | None) -> bool:
        """Whether a validation shows a divergence (see the module docstring).

        ``train_loss`` is the mean training loss since the previous validation, None when no
        step was taken since then."""
        if not self.factor:
            return False
        if not valid_loss <= self.factor * max(best_valid_loss, self.reference):
            return True
        if train_loss is None:
            return False
        return not (math.isfinite(train_loss) and train_loss <= self.factor * self.best_train_loss)

    def validate(
        self, state: Any, valid_loss: float, best_valid_loss: float, train_loss: float | None
    ) -> Any:
        """Record the validation of ``state`` (whatever the caller restores, e.g. a tuple of
        parameters, optimiser state and EMA; kept by reference, not copied).

        ``best_valid_loss`` is the best validation loss before this one. Returns the state to
        roll back to after a divergence, or None: no divergence, or none proven good yet.
        """
        if not self.factor:
            return None
        if self.diverged(valid_loss, best_valid_loss, train_loss):
            self.candidate = None
            if self.good is not None and self.rollbacks >= MAX_ROLLBACKS and math.isfinite(valid_loss):
                # Out of reach: re-base on this validation and go on from here.
                self.reference, self.rollbacks = valid_loss, 0
                self.good, self.candidate = state, None
                return None
            self.rollbacks += self.good is not None
            return self.good
        self.rollbacks = 0
        if train_loss is None:  # the start: nothing trained since, nothing older to go back to
            self.good, self.candidate = state, None
            return None
        self.best_train_loss = min(self.best_train_loss, train_loss)
        if self.candidate is not None:  # the interval trained from it was healthy
            self.good = self.candidate
        self.candidate = state
        return None
