"""Callbacks: the events the learner fires, and the exceptions that stop a scope.

Events, in the order one fit fires them::

    on_train_begin
      on_epoch_begin                      (once per epoch)
        on_batch_begin                    (once per optimizer step)
          on_loss                         (after forward + loss, before backward; once per micro-batch)
          on_backward_end                 (gradients ready, before optimizer.step)
          on_step_end                     (after optimizer.step)
        on_batch_end
        on_validate_begin
        on_validate_end
      on_epoch_end
    on_train_end

A callback stops a scope by raising one of the cancel exceptions from any hook
(or from anywhere inside the step). What then fires:

============================  ================================================  ==========================
raised                        skipped                                           end events that still fire
============================  ================================================  ==========================
``CancelBatchException``      the rest of this batch (e.g. backward, step)      on_batch_end
``CancelEpochException``      remaining batches and validation of this epoch    on_batch_end (if in a
                                                                                batch), on_epoch_end
``CancelFitException``        everything that is left                           on_batch_end, on_epoch_end
                                                                                (for the scopes that had
                                                                                begun), on_train_end
KeyboardInterrupt (Ctrl-C)    the learner finishes the current batch first,     as CancelFitException,
                              then stops as for ``CancelFitException``          then KeyboardInterrupt is
                                                                                re-raised
any other exception           everything                                        on_train_end only; the
                                                                                exception propagates
============================  ================================================  ==========================

End events reach every callback even if one of them cancels or fails (the
cancel, or the first error, is raised once all have run). A cancel raised
outside its own scope (a ``CancelBatchException`` in ``on_epoch_begin``) cancels
the scope it was raised in. ``on_train_end`` fires exactly once per fit, whatever happened. A batch that
began counts as an iteration however it ended (``learn.iteration`` advances), so
a schedule never replays a position.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .learner import Learner

EVENTS: tuple[str, ...] = (
    "on_train_begin",
    "on_epoch_begin",
    "on_batch_begin",
    "on_loss",
    "on_backward_end",
    "on_step_end",
    "on_batch_end",
    "on_validate_begin",
    "on_validate_end",
    "on_epoch_end",
    "on_train_end",
)


class CancelBatchException(Exception):
    """Raise from a callback to skip the rest of the current batch."""


class CancelEpochException(Exception):
    """Raise from a callback to skip the rest of the current epoch, validation included."""


class CancelFitException(Exception):
    """Raise from a callback to stop the whole fit cleanly."""


#: The cancels, smallest scope first.
CANCELS = (CancelBatchException, CancelEpochException, CancelFitException)


def fire_end(handlers: Sequence[Callable[[], Any]], cancels: tuple[type[Exception], ...]) -> None:
    """Call every handler of an end event, even after one cancels or fails; a cancel of this scope (or smaller) ends here.

    No callback may miss the end of a scope it saw begin (the recorder would
    lose a step, the checkpoint an epoch). Once all have run, the first error
    is raised, else the largest cancel, unless it is one of ``cancels``: a cancel
    raised by an end event has nothing left to skip in its own scope.
    """
    cancel = error = None
    for handler in handlers:
        try:
            handler()
        except CANCELS as err:
            if cancel is None or cancel_rank(err) > cancel_rank(cancel):
                cancel = err
        except Exception as err:
            error = error or err
    if error is not None:
        raise error
    if cancel is not None and not isinstance(cancel, cancels):
        raise cancel


def cancel_rank(err: Exception) -> int:
    """0 for a batch cancel, 1 for an epoch cancel, 2 for a fit cancel (subclasses included)."""
    return next(i for i, kind in enumerate(CANCELS) if isinstance(err, kind))


class Callback:
    """Base class: every hook is a no-op; ``order`` sorts callbacks (lower runs first).

    The learner sets ``self.learn`` before ``on_train_begin``. Hooks take no
    arguments: they read and write the learner's state (``learn.xb``, ``learn.loss``,
    ``learn.iteration``, ...).
    """

    order: int = 0
    learn: "Learner"

    def on_train_begin(self) -> None:
        """Before the first epoch of a fit."""

    def on_epoch_begin(self) -> None:
        """Before the training batches of an epoch."""

    def on_batch_begin(self) -> None:
        """Before an optimizer step's forward passes; schedules set lr and momentum here."""

    def on_loss(self) -> None:
        """After forward and loss of one micro-batch, before backward."""

    def on_backward_end(self) -> None:
        """After all backward passes of a step, before ``optimizer.step()``."""

    def on_step_end(self) -> None:
        """After ``optimizer.step()``."""

    def on_batch_end(self) -> None:
        """After a training step (or its cancellation)."""

    def on_validate_begin(self) -> None:
        """Before validation at the end of an epoch."""

    def on_validate_end(self) -> None:
        """After validation; ``learn.val_loss`` and ``learn.val_metrics`` are set."""

    def on_epoch_end(self) -> None:
        """After an epoch (or its cancellation)."""

    def on_train_end(self) -> None:
        """After the fit, always, whatever stopped it."""

    def state_dict(self) -> dict[str, Any]:
        """State to store in a checkpoint (none by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(order={self.order})"
