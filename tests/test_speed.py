"""Batched runs and the fast path compute what separate runs and the faithful path compute; the
benchmark runs and reports consistent numbers."""

import dataclasses
import io
import re

import numpy as np
import pytest
import torch

from benchmarks import speed as benchmark
from engine.config import RunConfig
from engine.loop import Speed, build_model, fit, fit_batch, make_optimizer
from experiments.driver import Setting, reproduce
from experiments.sets import Case, figure_runs
from models import SkipNet
from tests.conftest import DEVICES, config, image_crop, roundtrip, small_problem, tiny_profile
from utils.noise import salt_and_pepper
from utils.rundir import RunDir
from utils.seeding import derive_seed
from utils.state import is_finite, stack_states, unstack_state

SHAPE = (3, 45, 37)  # odd sides: the nets' crops and concats on uneven sizes


def problems(runs: int, dtype=torch.float32):
    """``runs`` different (noisy, clean) pairs of SHAPE: 10% to 50% of the entries corrupted."""
    return small_problem(runs, SHAPE, 7, torch.linspace(0.1, 0.5, runs), dtype)


def model(cfg: RunConfig, seeds, device="cpu", dtype=torch.float32):
    return build_model(cfg, SHAPE, list(seeds), scales=3).to(device, dtype)


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_net_computes_what_separate_nets_compute(device: str) -> None:
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        nets.append(SkipNet(5, 2, width=6, scales=3, skip=2).to(device))
    grouped = SkipNet(5, 2, width=6, scales=3, skip=2, groups=3).to(device)
    grouped.load_state_dict(stack_states([n.state_dict() for n in nets]))
    z = torch.rand(3, 5, 45, 37, device=device)
    out = grouped(z.reshape(1, 15, 45, 37)).reshape(3, 2, 45, 37)
    out.square().sum().backward()
    for k, net in enumerate(nets):
        alone = net(z[k : k + 1])
        torch.testing.assert_close(out[k : k + 1], alone, atol=1e-5, rtol=1e-5)
        alone.square().sum().backward()
        for (name, p), q in zip(net.named_parameters(), grouped.parameters(), strict=True):
            torch.testing.assert_close(q.grad.chunk(3)[k], p.grad, atol=1e-4, rtol=1e-4, msg=name)


def test_states_stack_and_unstack_exactly() -> None:
    cfg = config(alg="adam", lr=0.01)
    single = [model(cfg, [s]) for s in (0, 1)]
    optimizer_states = []
    for m in single:  # one Adam step each, so the optimizer states hold per-entry tensors
        opt = make_optimizer(m, cfg)
        m(None)[1].sum().backward()
        opt.step()
        optimizer_states.append(opt.state_dict())
    batch = model(cfg, [0, 1])
    batch.load_state_dict(stack_states([m.state_dict() for m in single]))
    assert batch.runs == 2 and batch.prior.net.groups == 2 and batch.sparse.g.shape == (2, *SHAPE)
    for states in ([m.state_dict() for m in single], optimizer_states):
        back = unstack_state(stack_states(states), 2)
        for a, b in zip(states, back, strict=True):
            buffer_a, buffer_b = io.BytesIO(), io.BytesIO()
            torch.save(a, buffer_a)
            torch.save(b, buffer_b)
            assert len(buffer_b.getvalue()) <= len(buffer_a.getvalue()) + 512  # no shared storage
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not is_finite({"a": [torch.tensor([1.0, float("nan")])]}) and is_finite({"a": 1})


@pytest.mark.parametrize("settings", [{"method": "dop"}, {"method": "dip", "loss": "l1"}])
def test_batched_runs_give_the_histories_of_separate_runs(settings: dict) -> None:
    """In float64, where the grouped and the plain convolutions' rounding differences stay at
    the last bits instead of growing into whole steps (as the L1 loss's sign gradient makes
    them grow in fp32)."""
    seeds, f64 = [0, 1, 2], torch.float64
    y, clean = problems(3, f64)
    cfg = config(num_iter=40, **settings)
    alone = [
        fit(model(cfg, [s], dtype=f64), y[k : k + 1], cfg, seed=s, clean=clean[k : k + 1],
            progress=False)
        for k, s in enumerate(seeds)
    ]  # fmt: skip
    saved = {}
    together = fit_batch(
        model(cfg, seeds, dtype=f64), y, cfg, seeds=seeds, clean=clean, progress=False,
        checkpoint=lambda states: saved.setdefault(states[0]["iteration"], roundtrip(states)),
    )  # fmt: skip
    for a, b in zip(alone, together, strict=True):
        assert [r["iteration"] for r in a.history] == [r["iteration"] for r in b.history]
        for column in ("loss", "psnr", "ssim"):
            np.testing.assert_allclose([r[column] for r in a.history],
                                       [r[column] for r in b.history], rtol=1e-9)  # fmt: skip
        np.testing.assert_allclose(a.image, b.image, atol=1e-9)
    # the batch's checkpoint of each run resumes that run alone, and ends as the batch's did
    resumed = fit(model(cfg, [2], dtype=f64), y[2:], cfg, seed=2, clean=clean[2:],
                  state=saved[20][2], progress=False)  # fmt: skip
    np.testing.assert_allclose([r["psnr"] for r in resumed.history],
                               [r["psnr"] for r in together[2].history], rtol=1e-9)  # fmt: skip


def test_a_diverging_run_keeps_only_finite_checkpoints() -> None:
    """The state is saved at the top of an iteration whose logged row finds the divergence, so
    the saved state must be checked itself: the run keeps its last finite checkpoint."""
    y, clean = problems(2)
    cfg = config(num_iter=60, save_every=5, lr_c=1e9)
    saved: list[list] = []
    together = fit_batch(
        model(cfg, [0, 1]), y, cfg, seeds=[0, 1], clean=clean, progress=False,
        checkpoint=lambda states: saved.append(roundtrip(states)),
    )  # fmt: skip
    assert all(r.diverged_at is not None for r in together)
    assert all(is_finite(state) for states in saved for state in states if state is not None)
    assert any(state is None for states in saved for state in states)


def test_a_diverging_run_does_not_disturb_the_others() -> None:
    y, clean = problems(3, torch.float64)
    y[1, :, :5] = 1e300  # run 1's loss overflows at once; runs 0 and 2 are fine
    cfg = config(num_iter=20)
    together = fit_batch(model(cfg, [0, 1, 2], dtype=torch.float64), y, cfg, seeds=[0, 1, 2],
                         clean=clean, progress=False)  # fmt: skip
    assert together[1].diverged_at == 0 and together[1].history == [] and together[1].image is None
    for k in (0, 2):
        alone = fit(model(cfg, [k], dtype=torch.float64), y[k : k + 1], cfg, seed=k,
                    clean=clean[k : k + 1], progress=False)  # fmt: skip
        assert together[k].diverged_at is None and together[k].iterations == 20
        np.testing.assert_allclose([r["psnr"] for r in alone.history],
                                   [r["psnr"] for r in together[k].history], rtol=1e-9)  # fmt: skip
    with pytest.raises(FloatingPointError):  # alone, such a run has nothing to report
        fit(model(cfg, [1], dtype=torch.float64), y[1:2], cfg, seed=1, progress=False)


@pytest.mark.parametrize("device", DEVICES)
def test_fast_path_agrees_with_the_faithful_path(device: str) -> None:
    """The fast path (with bf16 on even where this CPU lacks it natively) computes the first row
    as the faithful path does, and recovers the image as well. Later rows are compared loosely:
    this run is chaotic enough that fp32 with only the memory layout changed ended up to 0.21 dB
    away, and the fast path up to 0.38 dB (seeds 0-3, 96x96, 500 iterations, 2026-11-25)."""
    clean_np = image_crop(96)
    noisy = salt_and_pepper(clean_np, 0.5, derive_seed(0, "noise")).noisy
    y, clean = torch.from_numpy(noisy)[None].to(device), torch.from_numpy(clean_np)[None].to(device)
    fast = dataclasses.replace(Speed.of(True, device), bf16=True)
    curves = []
    for speed in (Speed(), fast):
        cfg = RunConfig(width=16, num_iter=500, show_every=100).resolved()
        m = build_model(cfg, clean_np.shape, [0]).to(device)
        result = fit(m, y, cfg, clean=clean, speed=speed, progress=False)
        curves.append([row["psnr"] for row in result.history])
    faithful, fast_curve = curves
    assert abs(fast_curve[0] - faithful[0]) < 0.02  # the same forward pass, in bf16
    assert faithful[-1] > 18 and fast_curve[-1] > 18  # both recover (the noisy input: 8 dB)
    assert abs(fast_curve[-1] - faithful[-1]) < 1.0, curves


@pytest.mark.gpu
@pytest.mark.parametrize("runs", [1, 3])
def test_fast_batched_loop_does_not_synchronise(runs: int) -> None:
    """As tests/test_recovery.py's sync test, for the fast path of a GPU and a batch of runs."""
    y, clean = problems(runs)
    counts = []
    for num_iter in (6, 26):
        cfg = config(num_iter=num_iter, show_every=1000, save_every=1000, fast=True)
        m = model(cfg, range(runs), device="cuda")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with pytest.warns(UserWarning) as record:
                fit_batch(m, y.cuda(), cfg, seeds=[*range(runs)], clean=clean.cuda(),
                          progress=False)  # fmt: skip
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in record))
    assert counts[0] == counts[1]


@pytest.mark.gpu
def test_adam_resumes_across_optimizer_kernels() -> None:
    """A checkpoint of the default kernels resumed with fused ones and back, on a GPU, where fused
    Adam wants its step counters on the device and the other kernels want them on the host;
    and with --fast added or dropped (channels-last weights: the moments follow their layout,
    which fused Adam requires)."""
    y, clean = (t.cuda() for t in problems(1))
    cfg = config(alg="adam", lr=0.01, num_iter=10, save_every=10)
    fast = dataclasses.replace(Speed.of(True, "cuda"), compile=False)
    for first, second in ((Speed(), Speed(fused=True)), (Speed(fused=True), Speed()),
                          (Speed(), fast), (fast, Speed())):  # fmt: skip
        saved = []
        fit(model(cfg, [0], "cuda"), y, cfg, clean=clean, speed=first, progress=False,
            checkpoint=lambda state, saved=saved: saved.append(roundtrip(state)))  # fmt: skip
        longer = dataclasses.replace(cfg, num_iter=20)
        resumed = fit(model(cfg, [0], "cuda"), y, longer, clean=clean, speed=second,
                      state=saved[-1], progress=False)  # fmt: skip
        assert resumed.iterations == 20
        assert [r["iteration"] for r in resumed.history] == [0, 5, 10, 15, 19]


@pytest.mark.slow
def test_compiled_path_agrees_with_the_faithful_path() -> None:
    y, clean = problems(1)
    final = []
    for speed in (Speed(), Speed(compile=True)):
        cfg = config(num_iter=60, show_every=20)
        result = fit(model(cfg, [0]), y, cfg, clean=clean, speed=speed, progress=False)
        final.append(result.history[-1]["psnr"])
    assert abs(final[0] - final[1]) < 0.3


def test_reproduce_in_batches(tmp_path) -> None:
    cases = {"fig3": (), "fig4": (Case("astronaut", 0.3), Case("astronaut", 0.5))}
    tiny = tiny_profile(40)
    setting = Setting(tiny, tmp_path / "out", tmp_path, ("cpu",))
    outcome, _ = reproduce(["fig4"], setting, tmp_path / "figs", tmp_path / "docs", cases=cases,
                           batch=8)  # fmt: skip
    assert len(outcome["started"]) == 4 and not outcome["failed"]
    for run in figure_runs(["fig4"], cases):  # DOP and DIP-L1 at two levels: two batches of two
        assert RunDir(tmp_path / "out", run.ckpt(tiny)).config()["report"]["batch_size"] == 2


def test_benchmark_runs_at_a_tiny_size(capsys) -> None:
    argv = ["--gpu", "cpu", "--image", "astronaut", "--size", "40", "--width", "4",
            "--iters", "12", "--batch", "2"]  # fmt: skip
    assert benchmark.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("device: cpu")
    rows = [
        m.groups()
        for line in lines
        if (m := re.fullmatch(r"(faithful|fast) +([\d.]+) +([\d.]+)", line))
    ]
    rates = {path: float(rate) for path, rate, _ in rows}
    assert rates.keys() == {"faithful", "fast"} and all(np.isfinite([float(f) for *_, f in rows]))
    assert "batched" in lines[-2]
    # the last line is the ratio of the two rates it printed (to their printed precision)
    speedup = float(re.fullmatch(r"speedup (\S+)", lines[-1]).group(1))
    assert speedup == pytest.approx(rates["fast"] / rates["faithful"], abs=0.01 + 0.01 * speedup)
    assert benchmark.main(argv + ["--size", "20"]) == 2  # below the net's smallest input
    assert "--size >= 33" in capsys.readouterr().err
