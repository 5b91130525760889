"""Each method's default is its public code's (issue 24, docs/FIDELITY.md), and the option that
keeps this code's earlier choice restores it: SelfDeblur's generator and SSIM loss, the error
ratios, the random projector on inpainting and super-resolution (the Lanczos-2 downsampler),
the deep decoder's find_best, ES-EMV's reported image, the early-stopping paper's DIP, the
lottery prior's evaluation statistic."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.config import RunConfig
from engine.loop import FitResult, build_model, fit, fit_batch
from experiments.sets import PROFILES, Run
from models.skip import NonLocal, SkipNet, nonlocal_parameters
from tasks import TASKS
from tasks.operators import Downsample, Lanczos2, lanczos2_taps
from tests.conftest import config, image_crop, small_problem
from utils.losses import data_fit
from utils.metrics import Aligned, error_ratio, ssim_of, success_share
from utils.state import stack_states
from utils.stopping import ExponentialVariance, LowestLoss

# --- SelfDeblur's image generator: networks/skip.py with non_local_dot_product.py ------------


def public_nonlocal(block: NonLocal, x: torch.Tensor) -> torch.Tensor:
    """SelfDeblur's _NonLocalBlockND.forward, transcribed (one group)."""
    b = x.size(0)
    g_x = block.g(x).view(b, block.inter, -1).permute(0, 2, 1)
    theta_x = block.theta(x).view(b, block.inter, -1).permute(0, 2, 1)
    phi_x = block.phi(x).view(b, block.inter, -1)
    f = torch.matmul(theta_x, phi_x)
    y = torch.matmul(f / f.size(-1), g_x).permute(0, 2, 1).contiguous()
    return block.W(y.view(b, block.inter, *x.size()[2:])) + x


def test_nonlocal_block_is_selfdeblurs_and_starts_as_the_identity() -> None:
    torch.manual_seed(0)
    block, x = NonLocal(8), torch.rand(1, 8, 9, 7)  # odd sides: the pooled keys are 4 x 3
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)  # W's BatchNorm starts at 0
    torch.nn.init.normal_(block.W[1].weight)
    torch.nn.init.normal_(block.W[1].bias)
    torch.testing.assert_close(block(x), public_nonlocal(block, x))
    assert not torch.allclose(block(x), x)
    grouped = NonLocal(8, groups=2)  # two runs' blocks side by side compute each one's
    other = NonLocal(8)
    torch.nn.init.normal_(other.W[1].weight)
    grouped.load_state_dict(stack_states([block.state_dict(), other.state_dict()]))
    z = torch.rand(2, 8, 9, 7)
    out = grouped(z.reshape(1, 16, 9, 7)).reshape(2, 8, 9, 7)
    for k, single in enumerate((block, other)):
        torch.testing.assert_close(out[k : k + 1], single(z[k : k + 1]), atol=1e-5, rtol=1e-5)


def test_selfdeblur_generator_has_the_public_parameter_count() -> None:
    """SelfDeblur's G_x (8 inputs, 1 output, width 128, 16 skip channels): 2,265,489 parameters
    without the blocks and 3 blocks of 33,344 more (counted from its networks/)."""
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    plain = SkipNet(8, 1, width=128, skip=16)
    selfdeblur = SkipNet(8, 1, width=128, skip=16, nonlocal_from=2)
    assert count(plain) == 2_265_489 and nonlocal_parameters(128) == 33_344
    assert count(selfdeblur) == 2_365_521 == count(plain) + 3 * nonlocal_parameters(128)
    assert sum(isinstance(m, NonLocal) for m in selfdeblur.body.deeper.modules()) == 3
    assert [isinstance(scale.deeper[3], NonLocal) for scale in scales(selfdeblur)] == [
        False, False, True, True, True]  # fmt: skip


def scales(net: SkipNet) -> list:
    out, scale = [], net.body
    while scale is not None:
        out.append(scale)
        inner = [m for m in scale.deeper if type(m).__name__ == "_Scale"]
        scale = inner[0] if inner else None
    return out


@pytest.mark.parametrize("option", [[], ["no_nonlocal"]])
def test_deblurring_uses_selfdeblurs_generator_unless_told(option: list[str]) -> None:
    settings = {"task": "deblur", "kernel": "k.png", "width": 4} | {o: True for o in option}
    cfg = RunConfig(**settings).resolved()
    net = build_model(cfg, (1, 70, 66), [0, 1]).prior.net  # two runs: the grouped net
    blocks = [m for m in net.modules() if isinstance(m, NonLocal)]
    assert len(blocks) == (0 if option else 3) and all(b.groups == 2 for b in blocks)
    dop = build_model(RunConfig(width=4).resolved(), (3, 64, 64), [0]).prior.net
    assert not any(isinstance(m, NonLocal) for m in dop.modules())  # DOP's: none


@pytest.mark.parametrize("groups", [1, 2])
def test_low_memory_generator_with_nonlocal_blocks_is_bit_identical(groups: int) -> None:
    torch.manual_seed(0)
    nets = [SkipNet(8, 1, width=8, groups=groups, nonlocal_from=2) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    for module in nets[1].modules():
        if hasattr(module, "checkpointed"):
            module.checkpointed = True
    z = torch.rand(1, 8 * groups, 45, 37)
    outs = []
    for net in nets:
        outs.append(net(z))
        outs[-1].square().sum().backward()
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a.grad, b.grad)


# --- SelfDeblur's SSIM loss: SSIM.py's zero-padded windows -----------------------------------


def public_ssim(img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """SelfDeblur's SSIM.py ``_ssim`` (window 11, σ 1.5, size_average), transcribed."""
    gauss = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    w1 = (gauss / gauss.sum())[:, None]
    channel = img1.size(1)
    window = (w1 @ w1.t())[None, None].expand(channel, 1, 11, 11).to(img1.dtype).contiguous()
    conv = lambda a: F.conv2d(a, window, padding=5, groups=channel)  # noqa: E731
    mu1, mu2 = conv(img1), conv(img2)
    s1, s2, s12 = (conv(img1 * img1) - mu1**2, conv(img2 * img2) - mu2**2,
                   conv(img1 * img2) - mu1 * mu2)  # fmt: skip
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s1 + s2 + c2))
    return ssim_map.mean()


@pytest.mark.parametrize("shape", [(1, 1, 37, 23), (1, 3, 15, 40), (1, 1, 9, 8)])
def test_the_ssim_loss_pads_with_zeros_as_selfdeblur(rng, shape) -> None:
    a, b = (torch.from_numpy(rng.random(shape)) for _ in range(2))
    ours = ssim_of(a, b, padding="zero")
    torch.testing.assert_close(ours[0], public_ssim(a, b), rtol=0, atol=1e-12)
    y, prediction = b.float(), a.float()
    loss = data_fit(prediction, y, 5, "l2_then_ssim", loss_switch=3)  # the default: SelfDeblur's
    torch.testing.assert_close(loss, 1 - ssim_of(prediction, y, padding="zero"))
    if min(shape[-2:]) >= 11:  # --ssim_padding valid: this code's earlier loss, the metric's
        valid = data_fit(prediction, y, 5, "l2_then_ssim", 3, ssim_padding="valid")
        torch.testing.assert_close(valid, 1 - ssim_of(prediction, y))
        assert not torch.allclose(valid, loss)


# --- Levin's error ratio and SelfDeblur's ----------------------------------------------------


def test_both_error_ratios_on_odd_sizes(rng) -> None:
    x = rng.random((1, 33, 27))
    noise = rng.normal(0, 0.05, x.shape)
    once, twice = (Aligned(x + s * noise, x, (0.0, 0.0), float(((s * noise) ** 2).sum()))
                   for s in (1, 2))  # fmt: skip
    assert error_ratio(twice, once, "ssd") == pytest.approx(4.0)  # squared Frobenius norms
    assert error_ratio(twice, once, "spectral") == pytest.approx(2.0)  # norms, not squared
    streak = np.zeros_like(x)
    streak[0, 5, :] = 0.1  # a rank-1 error: spectral and Frobenius norms agree
    blob = Aligned(x + streak + noise, x, (0.0, 0.0), float(((streak + noise) ** 2).sum()))
    spectral = np.linalg.norm((streak + noise)[0], 2) / np.linalg.norm(noise[0], 2)
    assert error_ratio(blob, once, "spectral") == pytest.approx(spectral)
    root_ssd = np.sqrt(error_ratio(blob, once, "ssd"))
    assert error_ratio(blob, once, "spectral") != pytest.approx(root_ssd, rel=1e-3)  # another
    assert success_share([1.0, 2.9, 3.0, 7.0]) == 0.5


# --- the random projector on inpainting and super-resolution ---------------------------------

# The normalised 1-D Lanczos-2 taps at factor 4, from the public get_kernel (docs/FIDELITY.md).
PUBLIC_TAPS = [-0.001065, -0.009752, -0.020384, -0.014878, 0.024594, 0.098658, 0.183115,
               0.239711, 0.239711, 0.183115, 0.098658, 0.024594, -0.014878, -0.020384,
               -0.009752, -0.001065]  # fmt: skip


def public_lanczos2(x: np.ndarray, factor: int) -> np.ndarray:
    """DIP's Downsampler(lanczos2, phase 0.5, preserve_size) of one channel: its 2-D kernel by
    get_kernel's double loop, replicate padding, a stride-s correlation, all in numpy."""
    width = 4 * factor + 1
    center = (width + 1) / 2
    kernel = np.zeros((width - 1, width - 1))
    for i in range(1, width):
        for j in range(1, width):
            val = 1.0
            for d in (abs(i + 0.5 - center) / factor, abs(j + 0.5 - center) / factor):
                val *= 2 * np.sin(np.pi * d) * np.sin(np.pi * d / 2) / (np.pi**2 * d**2)
            kernel[i - 1, j - 1] = val
    kernel /= kernel.sum()
    pad = (kernel.shape[0] - factor) // 2
    padded = np.pad(x, pad, mode="edge")
    h, w = x.shape[0] // factor, x.shape[1] // factor
    k = kernel.shape[0]
    return np.array([[(padded[r * factor : r * factor + k, c * factor : c * factor + k]
                       * kernel).sum() for c in range(w)] for r in range(h)])  # fmt: skip


@pytest.mark.parametrize("factor,size", [(4, (44, 36)), (2, (18, 30))])
def test_lanczos2_downsampler_is_the_public_one(rng, factor: int, size) -> None:
    assert np.allclose(lanczos2_taps(4).numpy(), PUBLIC_TAPS, atol=5e-7)
    operator = Lanczos2(factor)
    x = torch.from_numpy(rng.random((2, 3, *size)))
    out = operator(x)
    assert out.shape == (2, 3, size[0] // factor, size[1] // factor)
    assert operator.output_shape((3, *size)) == tuple(out.shape[1:])
    np.testing.assert_allclose(out[1, 2].numpy(), public_lanczos2(x[1, 2].numpy(), factor),
                               atol=1e-6)  # fmt: skip
    a, b = (torch.from_numpy(rng.random((1, 1, *size))) for _ in range(2))
    torch.testing.assert_close(operator(2 * a - 3 * b), 2 * operator(a) - 3 * operator(b))
    with pytest.raises(ValueError, match="even factor"):
        Lanczos2(3)


def test_projector_defaults_are_its_codes_per_task() -> None:
    """SR: width 128, a 1-channel seed, TV 0.75, Adam 0.5, Lanczos-2 in the model (the
    observation stays bicubic, for every variant); inpainting: width 128 with as many skip
    channels, the 2-channel meshgrid seed, TV 0.01, Adam 0.05; denoising: its own; 5001
    iterations each. Other priors keep the bicubic model."""
    settings = lambda c: (c.width, c.tv, c.lr, c.num_iter, c.loss, c.alg)  # noqa: E731
    sr = RunConfig(prior="drp", task="sr").resolved()
    inpaint = RunConfig(prior="drp", task="inpaint").resolved()
    denoise = RunConfig(prior="drp").resolved()
    assert settings(sr) == (128, 0.75, 0.5, 5001, "rmse", "adam") and sr.downsampler == "lanczos2"
    assert settings(inpaint) == (128, 0.01, 0.05, 5001, "rmse", "adam")
    assert settings(denoise) == (64, 0.45, 0.1, 5001, "rmse", "adam")
    assert RunConfig(task="sr").resolved().downsampler == "bicubic"
    cfg = RunConfig(prior="drp", task="sr", width=8).resolved()
    model = build_model(cfg, (3, 32, 32), [0], operator=None)
    assert model.prior.input.shape == (1, 1, 32, 32)
    assert isinstance(TASKS["sr"].operator(cfg, {}, [0]), Lanczos2)
    assert type(TASKS["sr"].physics(cfg, {})) is Downsample
    cfg = RunConfig(prior="drp", task="inpaint", width=8).resolved()
    prior = build_model(cfg, (3, 12, 17), [0, 1]).prior
    assert prior.input.shape == (2, 2, 12, 17) and prior.input.requires_grad
    torch.testing.assert_close(prior.input[1, 0, 5], torch.arange(17.0) / 16)  # across columns
    torch.testing.assert_close(prior.input[0, 1, :, 3], torch.arange(12.0) / 11)  # down rows
    assert prior.net.body.skip[0].out_channels == 2 * 8  # as many skip channels as the width
    old = build_model(cfg, (3, 12, 17), [0], seed="noise", seed_channels=3, skip=4).prior
    assert old.input.shape == (1, 3, 12, 17) and old.net.body.skip[0].out_channels == 4


# --- the deep decoder's find_best ----------------------------------------------------------


def test_find_best_keeps_the_net_after_the_last_half_percent_drop() -> None:
    """best > 1.005·L_j makes the net after step j the best (its image: iteration j + 1's)."""
    rule = LowestLoss((1, 1, 2, 2))
    losses = [1.0, 0.999, 0.9, 0.8999, 0.5, 0.499]
    for j, loss in enumerate(losses):
        rule.update(j, torch.full((1, 1, 2, 2), float(j)), torch.tensor([loss]))
    assert not rule.pending().any()  # step 5 did not qualify: nothing waits
    assert int(rule.best_iteration[0]) == 5 and float(rule.best_x[0, 0, 0, 0]) == 5.0
    rule.update(6, torch.full((1, 1, 2, 2), 6.0), torch.tensor([0.3]))  # the last step qualifies
    assert rule.pending().all()
    rule.finish(7, torch.full((1, 1, 2, 2), 7.0))  # the loop's forward after the last step
    assert int(rule.outcome(0)["detected_iteration"]) == 7 and not rule.fired.any()


def test_decoder_reports_find_best_by_default_as_its_public_fit(one_thread) -> None:
    """The decoder's defaults are its notebook's (1900 iterations, find_best); a short run's
    find_best image equals the public fit's loop (deepcopy of the net after each qualifying
    step, its output at the end); ``--stop none`` reports the last iterate only."""
    cfg = RunConfig(prior="decoder", width=8, num_iter=25, show_every=5).resolved()
    assert RunConfig(prior="decoder").resolved().num_iter == 1900 and cfg.stop == "find_best"
    y = torch.from_numpy(image_crop(64))[None]
    model = build_model(cfg, (3, 64, 64), [0])
    public = copy.deepcopy(model)
    [result] = fit_batch(model, y, cfg, seeds=[0], progress=False)
    found = result.detections["find_best"]
    optimizer = torch.optim.Adam(public.prior.trainable(), lr=0.01)
    best, best_net = 1e6, None
    for _ in range(cfg.num_iter):  # include/fit.py:97-136, find_best=True
        optimizer.zero_grad()
        loss = F.mse_loss(public.prior(None), y)
        loss.backward()
        optimizer.step()
        if best > 1.005 * loss.item():
            best, best_net = loss.item(), copy.deepcopy(public.prior)
    with torch.no_grad():
        image = best_net(None)[0].numpy()
    np.testing.assert_allclose(found["image"], image, atol=1e-5)
    assert found["detected_iteration"] > 0
    off = RunConfig(prior="decoder", width=8, num_iter=25, show_every=5, stop="none").resolved()
    [last] = fit_batch(build_model(off, (3, 64, 64), [0]), y, off, seeds=[0], progress=False)
    assert last.detections == {} and np.allclose(last.image, result.image)


# --- ES-EMV's reported image ----------------------------------------------------------------


@pytest.mark.parametrize("image", ["average", "raw"])
def test_emv_reports_its_moving_average_by_default(image: str) -> None:
    """The notebook plots the PSNR of the EMA at the detection: EMA_{t*}; raw x_{t*} is the
    option. Both are kept, the other under ``others``."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.rand(1, 1, 3, 3, generator=g) * (0.9**t) for t in range(40)]
    rule = ExponentialVariance(0.1, 5, 3, (1, 1, 3, 3), image=image)
    averages = []
    for t, x in enumerate(xs):
        rule.update(t, x)
        averages.append(rule.average.clone())
    t = int(rule.best_iteration[0])
    chosen, other = (averages[t], xs[t]) if image == "average" else (xs[t], averages[t])
    outcome = rule.outcome(0)
    np.testing.assert_array_equal(outcome["image"], chosen[0].numpy())
    [(name, kept)] = outcome["others"].items()
    assert name == ("raw" if image == "average" else "average")
    np.testing.assert_array_equal(kept, other[0].numpy())
    assert RunConfig().stop_emv_image == "average"


# --- the early-stopping paper's DIP, the lottery prior's statistic ---------------------------


def test_the_comparison_has_the_es_papers_dip_beside_dops() -> None:
    quick, full = PROFILES["quick"], PROFILES["full"]
    settings = lambda c: (c.alg, c.lr, c.width, c.num_iter, c.method)  # noqa: E731
    es = Run("F16", 0.5, "dip-es").config(quick, Path("o")).resolved()
    dip = Run("F16", 0.5, "dip").config(quick, Path("o")).resolved()
    assert settings(es) == ("adam", 0.01, 16, 3000, "dip")  # at least 3000 at the quick scale
    assert settings(dip) == ("sgd", 1.0, 16, 3000, "dip")  # DOP's paper's DIP
    es_full = Run("F16", 0.5, "dip-es").config(full, Path("o")).resolved()
    assert settings(es_full) == ("adam", 0.01, 128, 5000, "dip")


def test_every_iteration_peak_of_the_moving_average_is_tracked_on_the_device() -> None:
    """The lottery prior paper's number, max_t PSNR(EMA_t): with rows at every iteration it is
    the history's maximum; with sparse rows it is at least theirs."""
    y, clean = small_problem(1, (3, 40, 40))
    peaks = []
    for every in (1, 7):
        cfg = RunConfig(width=4, num_iter=30, show_every=every, save_every=28, ema=0.99, alg="adam",
                        lr=0.01, method="dip").resolved()  # fmt: skip
        model = build_model(cfg, (3, 40, 40), [0], scales=3)
        result = fit(model, y, cfg, clean=clean, progress=False)
        logged = max(r["psnr_ema"] for r in result.history)
        peak = result.peaks["oracle_every_iteration_best_psnr_ema"]
        assert peak >= logged - 1e-12
        peaks.append(peak)
        if every == 1:
            assert peak == pytest.approx(logged)
            best = max(result.history, key=lambda r: r["psnr_ema"])
            assert result.peaks["oracle_every_iteration_best_iteration_ema"] == best["iteration"]
    assert peaks[0] == pytest.approx(peaks[1])  # the rows do not change what is tracked


def test_a_find_best_run_extended_later_detects_as_one_run(one_thread) -> None:
    """A run of n iterations whose last step qualifies (its image waits for the next forward
    pass), continued to n + 1, keeps the image of the run of n + 1 that detects n: the short
    run's last checkpoint is taken before it makes that image without η, so the longer run
    takes it from its iteration n, with η, as one run does."""
    y = torch.from_numpy(image_crop(64))[None]

    def fit_to(n: int, **kw) -> FitResult:
        cfg = config(method="dip", stop="find_best", lr=30.0, num_iter=n, show_every=1,
                     save_every=1, width=8)  # fmt: skip
        return fit_batch(build_model(cfg, (3, 64, 64), [0]), y, cfg, seeds=[0], progress=False,
                         **kw)[0]  # fmt: skip

    # n: the net after step n − 1 qualified, the one after step n did not
    detects = lambda n: fit_to(n + 1).detections["find_best"]["detected_iteration"]  # noqa: E731
    n = next((n for n in range(4, 24) if detects(n) == n), None)
    assert n is not None, "no run length ends with a qualifying step then one that is not"
    whole, saved = fit_to(n + 1), []
    fit_to(n, checkpoint=saved.append)
    longer = fit_to(n + 1, states=saved[-1])
    found, again = whole.detections["find_best"], longer.detections["find_best"]
    assert found["detected_iteration"] == again["detected_iteration"] == n
    np.testing.assert_array_equal(found["image"], again["image"])


def test_the_decoders_find_best_is_not_defined_by_the_variance_rules_settings() -> None:
    """Without ES-WMV/EMV watching, their window, patience and decay play no part in a run."""
    base = RunConfig(prior="decoder").defining()
    assert RunConfig(prior="decoder", stop_window=50, stop_decay=0.3).defining() == base
    assert "stop_window" in RunConfig(prior="decoder", stop="wmv").defining()
