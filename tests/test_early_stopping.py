"""The early-stopping rule trainers/ltv.py and trainers/distill_encoder.py share."""

import math

import pytest

from trainers.early_stopping import EarlyStopping


def run(losses, patience, min_delta=0.0):
    stopper, copies = EarlyStopping(patience, min_delta), []

    def state(i):
        copies.append(i)
        return {"epoch": i}

    for i, loss in enumerate(losses, 1):
        if stopper.step(loss, lambda i=i: state(i)):
            break
    return stopper, copies


def test_keeps_the_best_state_and_stops_after_patience_stale_epochs():
    stopper, copies = run([3.0, 2.0, 2.5, 1.5, 1.6, 1.7, 1.4], patience=2)
    assert stopper.epochs == 6  # 1.6 and 1.7 are two stale epochs: stop before 1.4
    assert stopper.best_epoch == 4 and stopper.best_loss == 1.5
    assert stopper.best_state == {"epoch": 4}
    assert copies == [1, 2, 4]  # the state is copied only when the loss improves


def test_an_improvement_smaller_than_min_delta_is_stale():
    stopper, _ = run([1.0, 1.0 - 1e-7, 1.0 - 2e-7], patience=2, min_delta=1e-6)
    assert stopper.best_epoch == 1 and stopper.epochs == 3


def test_nan_never_improves_and_runs_out_the_epochs():
    stopper, copies = run([math.nan, math.nan], patience=5)
    assert stopper.best_state is None and stopper.epochs == 2 and copies == []
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(0)
