"""The fast path and batched runs compute what the faithful path computes; the benchmark runs."""

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import denoising
import reproduce
from benchmarks import speed as benchmark
from experiments import Case, Profile, figure_runs
from models import SkipNet
from recovery import (
    METHODS,
    FitConfig,
    Speed,
    build_model,
    fit,
    fit_batch,
    is_finite,
    make_optimizer,
    stack_models,
    stack_states,
    unstack_state,
)
from tests.conftest import DEVICES
from tests.test_cli import read_history
from utils.images import centre_crop, resolve_image
from utils.noise import salt_and_pepper

SHAPE = (3, 45, 37)  # odd sides: the nets' crops and concats on uneven sizes


def problems(runs: int, shape=SHAPE):
    """``runs`` different (noisy, clean) pairs of the same shape, as (K, C, H, W) tensors."""
    g = torch.Generator().manual_seed(7)
    clean = torch.rand(runs, *shape, generator=g)
    hit = torch.rand(clean.shape, generator=g) < torch.linspace(0.1, 0.5, runs)[:, None, None, None]
    return torch.where(hit, torch.rand(clean.shape, generator=g).round(), clean), clean


def models(seeds, method="dop", device="cpu"):
    return [
        build_model(SHAPE, sparse=METHODS[method].sparse, width=4, seed=s, scales=3).to(device)
        for s in seeds
    ]


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
    single = models([0, 1])
    cfg = FitConfig(alg="adam")
    for m in single:  # one Adam step each, so the optimizer states hold per-entry tensors
        opt = make_optimizer(m, cfg)
        m(torch.zeros_like(m.z))[1].sum().backward()
        opt.step()
        m.opt_state = opt.state_dict()
    batch = stack_models(single)
    assert batch.runs == 2 and batch.net.groups == 2 and batch.g.shape == (2, *SHAPE)
    for kind in ("model", "optimizer"):
        states = [m.state_dict() if kind == "model" else m.opt_state for m in single]
        back = unstack_state(stack_states(states), 2)
        for a, b in zip(states, back, strict=True):
            buffer_a, buffer_b = io.BytesIO(), io.BytesIO()
            torch.save(a, buffer_a)
            torch.save(b, buffer_b)
            assert len(buffer_b.getvalue()) <= len(buffer_a.getvalue()) + 512  # no shared storage
            flat_a, flat_b = _flatten(a), _flatten(b)
            assert flat_a.keys() == flat_b.keys()
            for key, value in flat_a.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(value, flat_b[key]), key
                else:
                    assert value == flat_b[key], key
    with pytest.raises(ValueError, match="cannot share a batch"):
        stack_models([single[0], models([2], "dip")[0]])


def _flatten(state, prefix="") -> dict:
    if isinstance(state, dict):
        return {k: v for key, s in state.items() for k, v in _flatten(s, f"{prefix}{key}.").items()}
    if isinstance(state, list | tuple):
        return {k: v for i, s in enumerate(state) for k, v in _flatten(s, f"{prefix}{i}.").items()}
    return {prefix: state}


# fp32 rounding differs between a grouped and a plain convolution; the L1 loss's gradient, the
# sign of each residual, turns those last-bit differences into whole steps, hence its larger bound.
@pytest.mark.parametrize(
    ("method", "tol_db", "tol_pixel"), [("dop", 1e-3, 1e-3), ("dip-l1", 0.05, 0.02)]
)
def test_batched_runs_give_the_histories_of_separate_runs(
    method: str, tol_db: float, tol_pixel: float
) -> None:
    seeds = [0, 1, 2]
    y, clean = problems(3)
    cfg = FitConfig(loss=METHODS[method].loss, num_iter=40, show_every=5, save_every=20)
    alone = [
        fit(m, y[k : k + 1], clean[k : k + 1], cfg, seed=seeds[k], progress=False)
        for k, m in enumerate(models(seeds, method))
    ]
    saved = {}
    together = fit_batch(
        stack_models(models(seeds, method)), y, clean, cfg, seeds=seeds, progress=False,
        checkpoint=lambda states: saved.setdefault(states[0]["iteration"], _copy(states)),
    )  # fmt: skip
    for a, b in zip(alone, together, strict=True):
        assert [r[0] for r in a.history] == [r[0] for r in b.history]
        np.testing.assert_allclose(
            [r[2] for r in a.history], [r[2] for r in b.history], atol=tol_db
        )
        assert np.abs(a.image - b.image).mean() < tol_pixel  # mean absolute difference
    # the batch's checkpoint of each run resumes that run alone, and its end matches the batch's
    resumed = fit(
        models([2], method)[0], y[2:], clean[2:], cfg, seed=2, state=saved[20][2], progress=False
    )
    np.testing.assert_allclose(
        [r[2] for r in resumed.history], [r[2] for r in together[2].history], atol=tol_db
    )


def _copy(states):
    buffer = io.BytesIO()
    torch.save(states, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def test_a_diverging_run_keeps_only_finite_checkpoints() -> None:
    """The state is saved at the top of an iteration whose logged row finds the divergence, so
    the saved state must be checked itself: the run keeps its last finite checkpoint."""
    y, clean = problems(2)
    cfg = FitConfig(num_iter=60, show_every=5, save_every=5, lr=1.0, lr_c=1e9)
    saved: list[list] = []
    together = fit_batch(
        stack_models(models([0, 1])), y, clean, cfg, seeds=[0, 1], progress=False,
        checkpoint=lambda states: saved.append(_copy(states)),
    )  # fmt: skip
    assert all(r.diverged_at is not None for r in together)
    assert all(is_finite(state) for states in saved for state in states if state is not None)
    assert any(state is None for states in saved for state in states)


def test_a_diverging_run_does_not_disturb_the_others() -> None:
    y, clean = problems(3)
    y[1, :, :5] = 1e30  # run 1's loss overflows at once; runs 0 and 2 are fine
    cfg = FitConfig(num_iter=20, show_every=5)
    together = fit_batch(
        stack_models(models([0, 1, 2])), y, clean, cfg, seeds=[0, 1, 2], progress=False
    )
    assert together[1].diverged_at == 0 and together[1].history == [] and together[1].image is None
    for k in (0, 2):
        alone = fit(models([k])[0], y[k : k + 1], clean[k : k + 1], cfg, seed=k, progress=False)
        assert together[k].diverged_at is None and together[k].iterations == 20
        np.testing.assert_allclose(
            [r[2] for r in alone.history], [r[2] for r in together[k].history], atol=1e-3
        )
    with pytest.raises(FloatingPointError):  # alone, such a run has nothing to report
        fit(models([1])[0], y[1:2], clean[1:2], cfg, seed=1, progress=False)


@pytest.mark.parametrize("device", DEVICES)
def test_fast_path_agrees_with_the_faithful_path(device: str, data_dir: Path) -> None:
    """The fast path, with bf16 on even where this CPU lacks it natively.

    96x96 and 500 iterations, not smaller: on a 64x64 crop the runs are chaotic enough that even
    fp32 in another memory layout ended up to 0.47 dB away in our runs, so a smaller test could
    not tell a bug from rounding."""
    clean_np = centre_crop(resolve_image("F16", data_dir).pixels, 96, 96)
    y = torch.from_numpy(salt_and_pepper(clean_np, 0.5, 0).noisy)[None].to(device)
    clean = torch.from_numpy(clean_np)[None].to(device)
    fast = dataclasses.replace(Speed.fast(device), bf16=True)
    final = []
    for speed in (Speed(), fast):
        model = build_model((3, 96, 96), sparse=True, width=16, seed=0).to(device)
        cfg = FitConfig(num_iter=500, show_every=100, speed=speed)
        final.append(fit(model, y, clean, cfg, seed=0, progress=False).history[-1][2])
    assert final[0] > 18  # it has recovered the image (the noisy input is at 8 dB)
    assert abs(final[1] - final[0]) < 0.3, final


@pytest.mark.gpu
@pytest.mark.parametrize("runs", [1, 3])
def test_fast_batched_loop_does_not_synchronise(runs: int) -> None:
    """As tests/test_recovery.py's sync test, for the fast path of a GPU and a batch of runs."""
    y, clean = problems(runs)
    cfg = FitConfig(show_every=1000, save_every=1000, speed=Speed.fast("cuda"))
    counts = []
    for num_iter in (6, 26):
        model = stack_models(models(range(runs), device="cuda"))
        cfg_n = dataclasses.replace(cfg, num_iter=num_iter)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with pytest.warns(UserWarning) as record:
                fit_batch(
                    model, y.cuda(), clean.cuda(), cfg_n, seeds=[*range(runs)], progress=False
                )
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in record))
    assert counts[0] == counts[1]


@pytest.mark.gpu
def test_adam_resumes_across_optimizer_kernels() -> None:
    """A checkpoint of the default kernels resumed with fused ones and back, on a GPU, where fused
    Adam wants its step counters on the device and the other kernels want them on the host."""
    y, clean = (t.cuda() for t in problems(1))
    cfg = FitConfig(alg="adam", lr=0.01, num_iter=10, show_every=5, save_every=10)
    for first, second in ((Speed(), Speed(fused=True)), (Speed(fused=True), Speed())):
        saved = []
        model = models([0], device="cuda")[0]
        fit(model, y, clean, dataclasses.replace(cfg, speed=first), progress=False,
            checkpoint=lambda state, saved=saved: saved.append(_copy(state)))  # fmt: skip
        longer = dataclasses.replace(cfg, num_iter=20, speed=second)
        model = models([0], device="cuda")[0]
        resumed = fit(model, y, clean, longer, state=saved[-1], progress=False)
        assert resumed.iterations == 20 and [r[0] for r in resumed.history] == [0, 5, 10, 15, 19]


@pytest.mark.slow
def test_compiled_path_agrees_with_the_faithful_path() -> None:
    y, clean = problems(1)
    final = []
    for speed in (Speed(), Speed(compile=True)):
        cfg = FitConfig(num_iter=60, show_every=20, speed=speed)
        final.append(fit(models([0])[0], y, clean, cfg, progress=False).history[-1][2])
    assert abs(final[0] - final[1]) < 0.3


def test_batched_command_lines_write_what_separate_ones_write(tmp_path: Path) -> None:
    def argv(out: str, ckpt: str, nlevel: str) -> list[str]:
        return ["--image", "astronaut", "--crop", "64", "--width", "4", "--num_iter", "30",
                "--show_every", "10", "--save_every", "10", "--device", "cpu", "--quiet",
                "--out_dir", str(tmp_path / out), "--ckpt", ckpt, "--nlevel", nlevel]  # fmt: skip

    runs = [("a", "0.3"), ("b", "0.5")]
    codes = denoising.run_batch([argv("batched", c, n) for c, n in runs] + [["--nlevel", "2"]], 4)
    assert codes == [0, 0, 2]
    for ckpt, nlevel in runs:
        assert denoising.main(argv("alone", ckpt, nlevel)) == 0
        a = [float(r["psnr"]) for r in read_history(tmp_path / "alone" / f"{ckpt}_history.csv")]
        b = [float(r["psnr"]) for r in read_history(tmp_path / "batched" / f"{ckpt}_history.csv")]
        assert a[0] == pytest.approx(b[0], abs=1e-4)  # same noise, init and input: same start
        # then within the 0.3 dB: a width-4, 5-scale net amplifies rounding differences
        np.testing.assert_allclose(a, b, atol=0.3)
        config = json.loads((tmp_path / "batched" / f"{ckpt}_config.json").read_text())
        assert config["batch_size"] == 2 and config["status"] == "finished"
        alone_config = json.loads((tmp_path / "alone" / f"{ckpt}_config.json").read_text())
        assert config["parameters"] == alone_config["parameters"]  # one run's net, not the batch's
    # a batched run's checkpoint is a single run's: denoising.py --resume extends it alone
    longer = argv("batched", "a", "0.3")
    longer[longer.index("--num_iter") + 1] = "40"
    assert denoising.main(longer + ["--resume"]) == 0
    assert len(read_history(tmp_path / "batched" / "a_history.csv")) == 5


def test_reproduce_in_batches(tmp_path: Path, data_dir: Path) -> None:
    cases = {"fig3": (), "fig4": (Case("F16", 0.3), Case("F16", 0.5))}
    tiny = Profile("tiny", 64, 1 / 32, 40 / 150_000, show_every=20, save_every=20)
    outcome, _ = reproduce.reproduce(
        ["fig4"], tiny, tmp_path / "out", data_dir, tmp_path / "figs", tmp_path / "docs", "cpu",
        cases=cases, batch=8,
    )  # fmt: skip
    assert len(outcome["started"]) == 4 and not outcome["failed"]
    for run in figure_runs(["fig4"], cases):  # DOP and DIP-L1 at two levels: two batches of two
        config = json.loads((tmp_path / "out" / f"{run.ckpt(tiny)}_config.json").read_text())
        assert config["batch_size"] == 2


def test_benchmark_runs_at_a_tiny_size(capsys) -> None:
    argv = ["--device", "cpu", "--image", "astronaut", "--size", "40", "--width", "4",
            "--iters", "12", "--batch", "2"]  # fmt: skip
    assert benchmark.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("device: cpu") and any(line.startswith("fast ") for line in lines)
    assert "batched" in lines[-2]
    assert lines[-1].startswith("speedup ") and float(lines[-1].split()[1]) > 0
    assert benchmark.main(argv + ["--size", "20"]) == 2  # below the net's smallest input
    assert "--size >= 33" in capsys.readouterr().err
