"""Early stopping without ground truth (ES-WMV, ES-EMV) and the output moving average: their
formulas against direct NumPy computations, the patience rule, and the rules inside the loop
(stopping, resuming, batching)."""

import numpy as np
import pytest
import torch

from tests.conftest import config, fit_small
from utils.observers import MovingAverage
from utils.stopping import RULES, ExponentialVariance, WindowedVariance

SHAPE = (2, 3, 5, 7)  # two runs of odd-sized images


def outputs(steps: int, seed: int = 0) -> np.ndarray:
    """A made-up sequence of K outputs that moves less and less, then more again."""
    rng = np.random.default_rng(seed)
    scale = np.abs(np.linspace(-1, 1, steps)) + 0.05
    return (0.5 + scale[:, None, None, None, None] * rng.standard_normal((steps, *SHAPE))
            ).astype(np.float32)  # fmt: skip


def test_wmv_variance_equals_numpy_over_the_window() -> None:
    window, xs = 6, outputs(40)
    rule = WindowedVariance(window, patience=1000, shape=SHAPE)
    for t, x in enumerate(xs):
        rule.update(t, torch.from_numpy(x))
        if t < window - 1:
            assert torch.isnan(rule.score).all()  # no full window yet
            continue
        recent = xs[t - window + 1 : t + 1].astype(np.float64)  # (W, K, C, H, W)
        direct = ((recent - recent.mean(0)) ** 2).mean(axis=(0, 2, 3, 4))
        np.testing.assert_allclose(rule.score.numpy(), direct, rtol=1e-9, atol=1e-15)


def test_emv_update_equals_its_formula() -> None:
    a, xs = 0.1, outputs(30).astype(np.float64)
    rule = ExponentialVariance(a, burn_in=5, patience=1000, shape=SHAPE, dtype=torch.float64)
    ema, emv = xs[0], np.zeros(SHAPE[0])
    rule.update(0, torch.from_numpy(xs[0]))
    for t in range(1, len(xs)):
        delta = xs[t] - ema
        ema = ema + a * delta
        emv = (1 - a) * (emv + a * (delta**2).sum(axis=(1, 2, 3)))
        rule.update(t, torch.from_numpy(xs[t]))
        np.testing.assert_allclose(rule.variance.numpy(), emv, rtol=1e-12)
        np.testing.assert_allclose(rule.average.numpy(), ema, rtol=1e-12)
        assert torch.isnan(rule.score).all() == (t <= 5)  # scored only after the burn-in


def test_patience_rule_keeps_the_image_at_the_minimum_and_freezes() -> None:
    xs, patience = outputs(80), 7
    rule = WindowedVariance(4, patience, shape=SHAPE)
    scores = []
    for t, x in enumerate(xs):
        rule.update(t, torch.from_numpy(x))
        scores.append(rule.score.clone())
    scores = torch.stack(scores[3:])  # from the first full window, (T, K)
    for k in range(SHAPE[0]):
        # the first iteration after which `patience` iterations bring no new minimum
        best, best_t, fired_at = np.inf, None, None
        for t, s in enumerate(scores[:, k].tolist(), start=3):
            if s < best:
                best, best_t = s, t
            elif t - best_t >= patience:
                fired_at = t
                break
        found = rule.outcome(k)
        assert found["fired_at"] == fired_at and found["detected_iteration"] == best_t
        np.testing.assert_array_equal(found["image"], xs[best_t][k])  # frozen after firing
        assert best_t < fired_at < len(xs) - 10  # the sequence's variance rises again later


def test_moving_average_is_the_dip_papers() -> None:
    xs, w = outputs(12), 0.99
    ema = MovingAverage(w, SHAPE)
    average = xs[0].astype(np.float64)
    ema.update(0, torch.from_numpy(xs[0]))
    for t in range(1, len(xs)):
        average = w * average + (1 - w) * xs[t]
        ema.update(t, torch.from_numpy(xs[t]))
    np.testing.assert_allclose(ema.estimate().numpy(), average, rtol=1e-5)


def assert_same_history(a: list[dict], b: list[dict]) -> None:
    """Equal rows (NaN, a score not yet defined, equals NaN)."""
    assert [list(row) for row in a] == [list(row) for row in b]
    np.testing.assert_array_equal([list(r.values()) for r in a], [list(r.values()) for r in b])


def fit_rules(rows, num_iter: int, states=None, saved=None, **settings):
    """DIP with stopping rules on rows of the small random problem (run k: seed 5k), float64."""
    cfg = config(
        **{
            "method": "dip",
            "num_iter": num_iter,
            "show_every": 10,
            "save_every": 20,
            "stop_window": 10,
            "stop_patience": 30,
            "alg": "adam",
            "lr": 0.05,
        }
        | settings
    )
    return fit_small(cfg, rows, scales=3, states=states, saved=saved)


def test_a_stopped_run_ends_at_its_row_and_resumes_to_the_same_detection() -> None:
    [whole] = fit_rules([0], 400, stop="emv")
    assert whole.stopped_at is not None and whole.iterations == whole.stopped_at + 1 < 400
    found = whole.detections["emv"]
    assert found["fired_at"] <= whole.stopped_at < found["fired_at"] + 10  # next logged row
    assert found["fired_at"] == found["detected_iteration"] + 30
    assert whole.history[-1]["iteration"] == whole.stopped_at
    saved: list = []  # killed at iteration 40, before the stop, then resumed
    fit_rules([0], 40, stop="emv", saved=saved)
    [resumed] = fit_rules([0], 400, states=saved[-1], stop="emv")
    assert resumed.detections["emv"]["detected_iteration"] == found["detected_iteration"]
    np.testing.assert_array_equal(resumed.detections["emv"]["image"], found["image"])
    assert_same_history(resumed.history, whole.history)


def test_a_checkpoint_before_the_first_score_is_kept_and_resumes_exactly() -> None:
    """Before a rule's first score (its window not full) the score is NaN and the minimum +inf:
    placeholders, not a run gone wrong. Such a checkpoint was dropped (a run killed then had
    nothing to resume; found by the command line's property test)."""
    settings = {"stop": "wmv", "show_every": 5, "save_every": 5}  # window 10
    [whole] = fit_rules([0], 40, **settings)
    saved: list = []
    fit_rules([0], 5, saved=saved, **settings)
    assert saved[-1][0] is not None and saved[-1][0]["iteration"] == 5
    [resumed] = fit_rules([0], 40, states=saved[-1], **settings)
    assert_same_history(resumed.history, whole.history)


@pytest.mark.parametrize("observe", [False, True])
def test_batched_runs_stop_on_their_own(observe: bool) -> None:
    settings = {"stop": "wmv", "stop_observe": observe, "ema": 0.9, "show_every": 1}
    saved: list = []
    batch = fit_rules([0, 1], 200, saved=saved, **settings)
    for k in range(2):
        [alone] = fit_rules([k], 200, **settings)
        assert batch[k].stopped_at == alone.stopped_at
        assert_same_history(batch[k].history, alone.history)
        for rule, found in alone.detections.items():
            assert batch[k].detections[rule]["detected_iteration"] == found["detected_iteration"]
        np.testing.assert_allclose(batch[k].estimates["ema"], alone.estimates["ema"])
    if observe:
        assert all(r.stopped_at is None and r.iterations == 200 for r in batch)
        assert {name for name, rule in RULES.items() if rule.light} == set(batch[0].detections)
        assert "psnr_ema" in batch[0].history[-1]
    else:  # they stop at different rows; each one's last checkpoint is after its stop row
        assert None is not batch[0].stopped_at != batch[1].stopped_at is not None
        for k, result in enumerate(batch):
            last = [states[k] for states in saved if states[k] is not None][-1]
            assert last["iteration"] == result.stopped_at + 1 == result.iterations
            assert last["stopped_at"] == result.stopped_at
