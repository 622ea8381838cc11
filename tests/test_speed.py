"""Speed measurement: the probe that times the evaluation pass, and the separate pass it falls back to."""
from __future__ import annotations

import time

import torch

from bench.job import SpeedProbe, measure_speed


class Sleeper(torch.nn.Module):
    """A module whose test_step takes a known time: the first call is slow (a warm-up effect)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.calls = []

    def test_step(self, data):
        time.sleep(0.2 if not self.calls else 0.02)
        self.calls.append(data)
        return [data]


def test_probe_times_only_the_images_after_warm_up_and_passes_outputs_through():
    m = Sleeper()
    probe = SpeedProbe(m, n_images=4, warmup=2)
    outs = [m.test_step(i) for i in range(9)]  # the TestLoop calls model.test_step like this
    assert outs == [[i] for i in range(9)] and m.calls == list(range(9))
    assert len(probe.times) == 4  # images 2..5; the slow first call and the ones after 6 are untimed
    assert all(0.015 < t < 0.15 for t in probe.times), probe.times
    fps, proto = probe.result()
    assert 6 < fps < 60
    assert "2 warm-up + 4 timed images" in proto and "timed during the evaluation pass" in proto and "CPU" in proto
    probe.remove()
    assert "test_step" not in m.__dict__ and m.test_step.__func__ is Sleeper.test_step


def test_probe_without_enough_images_gives_no_number():
    m = Sleeper()
    probe = SpeedProbe(m, n_images=10, warmup=3)
    for i in range(5):
        m.test_step(i)
    fps, why = probe.result()
    assert fps is None and "only 2 of 10 images timed" in why


def test_separate_pass_cycles_a_small_split():
    m = Sleeper()
    fps, proto = measure_speed(m, [0, 1], n_images=3, warmup=1)
    assert m.calls == [0, 1, 0, 1] and fps is not None and 10 < fps < 60
    assert "1 warm-up + 3 timed images" in proto and "separate timing pass" in proto
