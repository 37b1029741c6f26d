"""The divergence guard's decisions (so3krates.training.guard); the trainer's use of it is
tested in test_training.py (test_divergence_restores_last_good_state_and_slows_down)."""

import math

from so3krates.training.guard import DivergenceGuard


def test_exploded_training_loss_rolls_back_to_a_proven_state_while_validation_looks_fine():
    """The failure seen in a 30-minute aspirin run: the EMA weights still validate well, the raw
    parameters' training losses are 1e10. The guard goes back to the last state whose following
    interval trained healthily, not to the last validated one."""
    g = DivergenceGuard(10.0)
    best = math.inf
    assert g.validate("s0", 1.0, best, None) is None  # the start
    assert g.validate("s1", 0.5, 1.0, 0.8) is None
    assert g.validate("s2", 0.3, 0.5, 0.4) is None  # s1 proven by the interval s1 -> s2
    assert g.good == "s1" and g.candidate == "s2"
    # s2 may hold parameters wrecked by the interval's last step: the next interval shows it
    assert g.validate("s3", 0.31, 0.3, 4.7e10) == "s1"
    assert g.candidate is None
    # training goes on from s1; a healthy interval makes its end a candidate, the next proves it
    assert g.validate("s4", 0.29, 0.3, 0.45) is None
    assert g.good == "s1" and g.candidate == "s4"
    assert g.validate("s5", 0.28, 0.29, 0.35) is None
    assert g.good == "s4"


def test_non_finite_or_high_losses_are_divergences():
    g = DivergenceGuard(10.0)
    g.validate("s0", 1.0, math.inf, None)
    g.validate("s1", 0.5, 1.0, 0.8)
    assert g.diverged(math.nan, 0.5, 0.8)  # validation NaN
    assert g.diverged(5.01, 0.5, 0.8)  # validation above 10x the best
    assert not g.diverged(4.99, 0.5, 0.8)
    assert g.diverged(0.5, 0.5, math.nan)  # a NaN step poisoned the interval's mean
    assert g.diverged(0.5, 0.5, math.inf)
    assert g.diverged(0.5, 0.5, 8.01)  # above 10x the lowest interval mean (0.8)
    assert not g.diverged(0.5, 0.5, 7.99)
    assert not g.diverged(0.5, 0.5, None)  # no step since the last validation


def test_the_first_interval_is_judged_only_by_finiteness():
    """The first steps can raise the training loss far above the untrained model's validation
    loss and recover (aspirin: 33 against 0.61); only a non-finite mean is a divergence there."""
    g = DivergenceGuard(10.0)
    g.validate("s0", 0.61, math.inf, None)
    assert g.diverged(0.017, 0.61, math.inf) and g.diverged(0.017, 0.61, math.nan)
    assert g.validate("s1", 0.017, 0.61, 33.0) is None
    assert g.best_train_loss == 33.0
    assert g.validate("s2", 0.008, 0.017, 0.0037) is None
    assert g.validate("s3", 0.007, 0.008, 0.05) == "s1"  # 0.05 > 10 x 0.0037


def test_no_state_to_return_to_before_one_is_proven():
    """After a resume (the first validation already has a training interval) a divergence
    before any state was proven leaves training as it is."""
    g = DivergenceGuard(10.0)
    assert g.validate("r1", 0.5, 0.4, 0.3) is None  # a candidate, not proven
    assert g.validate("r2", 0.5, 0.4, math.nan) is None
    assert g.good is None


def test_disabled_guard_never_rolls_back():
    for factor in (None, 0):
        g = DivergenceGuard(factor)
        g.validate("s0", 1.0, math.inf, None)
        assert not g.diverged(math.nan, 1.0, math.nan)
        assert g.validate("s1", math.nan, 1.0, math.nan) is None


def test_the_guard_does_not_loop_on_an_unreachable_reference():
    """A lucky low validation loss (0.3 among 1.4-4.2) must not make every later validation
    a divergence: after MAX_ROLLBACKS rollbacks in a row the guard re-bases and goes on."""
    from so3krates.training.guard import MAX_ROLLBACKS

    g = DivergenceGuard(10.0)
    g.validate("s0", 5.0, math.inf, None)
    assert g.validate("s1", 0.3, 5.0, 2.0) is None
    assert g.validate("s2", 1.4, 0.3, 2.0) is None  # s1 proven good
    rollbacks = [g.validate(f"r{k}", 4.0, 0.3, 2.0) for k in range(MAX_ROLLBACKS)]
    assert rollbacks == ["s1"] * MAX_ROLLBACKS  # still the guard's job for a while
    assert g.validate("r", 4.0, 0.3, 2.0) is None  # then: a new reference, no rollback
    assert g.good == "r" and not g.diverged(4.0, 0.3, 2.0)
    assert g.diverged(40.1, 0.3, 2.0)  # a real divergence against the new reference
