"""Self-validation early stopping (SV-ES): the public autoencoder's architecture, its size rule,
the score against a direct computation, the online training, the patience in checks, and the
rule inside the loop (batched runs as alone, resume) and on the command line."""

import csv
import math

import numpy as np
import pytest
import torch

import denoising
from experiments.driver import Setting, reproduce
from experiments.sets import SV_VARIANTS, Case
from tests.conftest import DATA_DIR, cli, config, fit_small, outputs, tiny_profile
from utils.seeding import derive_seed
from utils.stopping import SelfValidation
from utils.sv import AutoEncoder, side

SHAPE = (2, 3, 5, 7)  # two runs of odd-sized images: the AE works on 8 x 8


def test_the_public_autoencoder_has_its_parameters_and_maps_512_to_512() -> None:
    """AE_model.py: 536,544 + 1,218 (encoder), 1,024 (linear), 536,544 + 1,222 (decoder)."""
    net = AutoEncoder().eval()
    with torch.no_grad():
        x = torch.rand(1, 3, 512, 512)
        out, code = net(x), net.encoder(x)
    assert sum(p.numel() for p in net.parameters()) == 1_076_552
    assert out.shape == (1, 3, 512, 512) and code.shape == (1, 1, 4, 4)
    assert out.min() > 0 and out.max() < 1 and (code >= 0).all()  # sigmoid; ReLU on the code
    assert len(net.encoder) == 7 * 3 and len(net.linear) == 4 and len(net.decoder) == 7 * 4
    assert isinstance(net.decoder[-1], torch.nn.Sigmoid)


SIDES = [(512, 512, 512), (64, 64, 64), (61, 61, 64), (5, 7, 8), (768, 512, 512),
         (2048, 2048, 512), (40, 40, 32)]  # fmt: skip


@pytest.mark.parametrize("h,w,s", SIDES)
def test_the_autoencoders_side_is_the_nearest_power_of_two_and_its_code_16(h, w, s) -> None:
    assert side(h, w) == s
    with torch.no_grad():
        code = AutoEncoder(1, s).eval().encoder(torch.rand(1, 1, s, s))
    assert code.shape == (1, 1, 4, 4)


def fresh(seed: int, channels: int = 3, size: int = 8) -> AutoEncoder:
    """The AE a run of ``seed`` starts from: PyTorch's initialisation from its "sv" stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "sv"))
        return AutoEncoder(channels, size).double()


def outputs_sequence(steps: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.random((steps, *SHAPE)))


def test_the_first_score_is_the_untrained_autoencoders_error_on_the_newest_output() -> None:
    rule = SelfValidation(3, 10, SHAPE, torch.float64, seeds=[4, 9])
    xs = outputs_sequence(3)
    for t in range(2):
        rule.update(t, xs[t])
        assert torch.isnan(rule.score).all()  # no full window yet
    rule.update(2, xs[2])
    for k, seed in enumerate([4, 9]):
        newest = torch.nn.functional.interpolate(xs[2, k : k + 1], size=(8, 8), mode="bilinear",
                                                 align_corners=False)  # fmt: skip
        with torch.no_grad():
            direct = torch.linalg.vector_norm(newest - fresh(seed).eval()(newest))
        assert rule.score[k].item() == pytest.approx(direct.item(), rel=1e-12)
        assert rule.best_iteration[k] == 2


def test_each_run_is_its_own_autoencoder_in_the_grouped_layout() -> None:
    """Run k's slice of the stacked tensors is the AE its seed draws, and the loop over runs
    computes what the grouped net computes (training mode and eval mode)."""
    rule = SelfValidation(4, 10, SHAPE, torch.float64, seeds=[4, 9])
    images = torch.rand(5, 2, 3, 8, 8, dtype=torch.float64)
    for train in (False, True):  # eval first: a forward in training mode moves BN statistics
        rule.net.train(train)
        rule.single[0].train(train)
        grouped = rule.net(images.reshape(5, 6, 8, 8)).reshape(5, 2, 3, 8, 8)
        for k, seed in enumerate([4, 9]):
            alone = fresh(seed).train(train)(images[:, k])
            torch.testing.assert_close(rule.autoencode(k, images[:, k]), alone)
            torch.testing.assert_close(grouped[:, k], alone)


def smooth(shape=SHAPE) -> torch.Tensor:
    """A smooth colour ramp, the same in every run."""
    _, _, h, w = shape
    ramp = torch.linspace(0.5, 1, h)[:, None] * torch.linspace(0.2, 0.8, w)[None, :]
    colour = torch.tensor([1.0, 0.7, 0.4])[:, None, None]
    return (colour * ramp).expand(*shape).double().contiguous()


def test_the_autoencoder_learns_its_window() -> None:
    """On a constant smooth output the AE's error falls check after check (it trains on the
    window; one step of Adam 1e-3 a check, so slowly)."""
    rule = SelfValidation(4, 1000, SHAPE, torch.float64, seeds=[0, 1])
    scores = []
    for t in range(3 + 60):
        rule.update(t, smooth())
        scores.append(rule.score.clone())
    scores = torch.stack(scores[3:])
    assert (scores[-1] < 0.95 * scores[0]).all()
    assert (scores[10:] < scores[:-10]).float().mean() > 0.9  # falling over ten checks


def test_checks_every_n_iterations_and_the_patience_counts_iterations() -> None:
    """With a check every 3 iterations the rule scores at iterations 3, 6, ... only, and a
    patience of 7 iterations is ceil(7 / 3) = 3 checks without a new minimum."""
    x = smooth()
    rule = SelfValidation(4, 7, SHAPE, torch.float64, seeds=[0, 1], every=3)
    assert rule.patience == 3
    last = None
    for t in range(3 + 3 * 4):
        rule.update(t, x)
        checked = t >= 3 and (t - 3) % 3 == 0
        assert torch.isnan(rule.score).all() == (t < 3)
        if last is not None:  # a new score at a check (the AE trained since), else the last
            assert checked != bool(torch.isclose(rule.score, last, equal_nan=True).all())
        last = rule.score.clone()
    rule = SelfValidation(4, 7, SHAPE, torch.float64, seeds=[0, 1], every=3)
    for t, score in enumerate([5.0, 4.0, 4.5, 4.5, 4.5, 1.0]):  # checks at 3, 6, ..., 18
        rule.consider(3 + 3 * t, torch.full((2,), score, dtype=torch.float64), x)
        assert rule.fired.all() == (t >= 4)  # 3 checks after the minimum at check 1
    assert rule.outcome(0)["detected_iteration"] == 6 and rule.outcome(0)["fired_at"] == 15


def fit_sv(rows, num_iter: int, states=None, saved=None, **settings):
    """DIP with SV-ES on rows of the small random problem (run k: seed 5k), float64, a window of
    6 outputs (one batch), patience 12 iterations (the light rules: a window of 5, so that every
    score is defined at the checkpoints)."""
    cfg = config(**{"method": "dip", "num_iter": num_iter, "show_every": 5, "save_every": 10,
                    "stop": "sv", "sv_window": 6, "sv_patience": 12, "stop_window": 5,
                    "alg": "adam", "lr": 0.05, "pad": True} | settings)  # fmt: skip
    return fit_small(cfg, rows, shape=(3, 21, 19), scales=2, states=states, saved=saved)


def test_batched_runs_score_as_alone_and_a_resumed_run_as_the_whole() -> None:
    saved: list = []
    batch = fit_sv([0, 1], 40, saved=saved, stop_observe=True)
    for k in range(2):
        [alone] = fit_sv([k], 40, stop_observe=True)
        np.testing.assert_allclose([r["sv"] for r in batch[k].history],
                                   [r["sv"] for r in alone.history], rtol=1e-10)  # fmt: skip
        for rule in ("wmv", "emv", "sv"):  # --stop sv --stop_observe: the light rules watch too
            assert (batch[k].detections[rule]["detected_iteration"]
                    == alone.detections[rule]["detected_iteration"])  # fmt: skip
    assert all(math.isfinite(r["sv"]) for r in batch[0].history[1:])  # scored from iteration 5
    [whole] = fit_sv([1], 40, stop_observe=True)
    at_20 = [states[1] for states in saved if states[1]["iteration"] == 20]
    [resumed] = fit_sv([1], 40, states=at_20, stop_observe=True)
    np.testing.assert_array_equal([r["sv"] for r in resumed.history],
                                  [r["sv"] for r in whole.history])  # fmt: skip
    np.testing.assert_array_equal(resumed.detections["sv"]["image"],
                                  whole.detections["sv"]["image"])  # fmt: skip


def test_stop_sv_from_the_command_line(tmp_path, capsys) -> None:
    argv = cli(tmp_path, "--image", "astronaut", "--method", "dip", "--alg", "adam", "--lr",
               "0.01", "--num_iter", "60", "--show_every", "5", "--stop", "sv", "--sv_window",
               "4", "--sv_patience", "6", "--sv_every", "2")  # fmt: skip
    assert denoising.main(argv) == 0
    run = outputs(tmp_path)
    report = run.config()["report"]
    assert report["status"] == "stopped" and report["sv_fired_at"] is not None
    assert report["sv_fired_at"] >= report["sv_detected_iteration"] + 6
    assert run.image("stopped").shape == run.image("clean").shape
    settings = run.config()["settings"]
    assert (settings["sv_window"], settings["sv_every"]) == (4, 2)
    assert denoising.main(cli(tmp_path / "bad", "--stop", "sv", "--sv_every", "0")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--sv_every" in err and "\n" not in err


@pytest.mark.slow
def test_the_sv_comparison_set_records_every_rule_and_its_gap(tmp_path) -> None:
    """``reproduce.py compare-sv`` on one tiny case: DIP and DIP-L1 with SV-ES (one check, at
    the first full window) and both light rules watching; its table and COMPARISON.md section.
    Slow: 20 s of CPU (two 64 x 64 autoencoder passes over a 256-image window)."""
    profile = tiny_profile(300, sv_every=45)
    cases = {"compare-sv": (Case("cat", 0.12, "gaussian"),)}
    setting = Setting(profile, tmp_path / "out", DATA_DIR, ("cpu",))
    outcome, files = reproduce(["compare-sv"], setting, tmp_path / "figs", tmp_path / "docs",
                               cases=cases)  # fmt: skip
    assert len(outcome["started"]) == len(SV_VARIANTS) and not outcome["failed"]
    with (tmp_path / "docs" / "comparison_sv_tiny.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["DIP (L2)", "DIP-L1"]
    for r in rows:
        assert int(r["sv_iteration"]) == 255 and r["sv_fired_at"] == ""  # P = 500: not fired
        peak = float(r["oracle_peak_psnr"])
        assert float(r["oracle_sv_gap"]) == pytest.approx(peak - float(r["sv_psnr"]))
        assert r["wmv_psnr"] and r["emv_psnr"] and int(r["iterations"]) == 300
    text = (tmp_path / "docs" / "COMPARISON.md").read_text()
    assert "SV-ES's set" in text and "SV gap (oracle)" in text and "every 45 iteration" in text


def test_the_memory_estimate_counts_the_windows_per_run() -> None:
    """Each run adds its window, W·C·S² values (3 x 512², W = 256: 805 MB); the estimate before
    a run includes SV-ES's memory only with --stop sv."""
    from engine.device import memory_need
    from utils import sv

    one, two = (sv.memory(3, 512, 512, 256, k) for k in (1, 2))
    assert two - one == 256 * 3 * 512 * 512 * 4
    assert sv.memory(1, 61, 59, 100, 1) - sv.memory(1, 61, 59, 99, 1) == 64 * 64 * 4
    cfg = config(stop="sv")
    with_sv = memory_need(cfg, (3, 64, 64), torch.device("cpu"), runs=2)
    without = memory_need(config(), (3, 64, 64), torch.device("cpu"), runs=2)
    assert with_sv.bytes - without.bytes == with_sv.extra == sv.memory(3, 64, 64, 256, 2)
