"""`python -m src.bench --arithmetic`'s counting (the measuring itself is a benchmark's, not a test's)."""
from __future__ import annotations

from src.bench_flops import EpochClock, epoch_flops


def test_epoch_flops_counts_forward_backward_and_validation():
    # 784-10-10-3: multiply-adds 7840 + 100 + 30; training = forward + weight gradients + input gradients but the first
    per_train = 2 * 7970 + 2 * 7970 + 2 * (7970 - 7840)
    assert epoch_flops([10, 10], 3, n_train=100, n_val=10) == 100 * per_train + 10 * 2 * 7970


def test_epoch_clock_takes_trial_0_of_a_group_and_every_epoch_of_a_lone_trial():
    clock = EpochClock()
    for epoch in (1, 2, 3):
        clock(epoch, {})  # a lone trial's hook: (epoch, logs)
        clock(1, epoch, {})  # trial 1 of a group: not timed
    assert len(clock.ends) == 3 and clock.steady() >= 0
    group = EpochClock()
    group(0, 1, {})
    group(1, 1, {})
    assert len(group.ends) == 1
