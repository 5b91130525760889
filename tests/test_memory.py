"""Memory: the estimate before a run, the refusal, out-of-memory during a run, --low_memory."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.utils import prune

import denoising
from engine import loop, run
from engine.config import RunConfig, parse
from engine.device import memory_need
from engine.loop import Speed, build_model, fit_batch
from models import SkipNet
from tests.conftest import ROOT
from tests.conftest import cli as tiny_cli
from utils import memory
from utils.rundir import RunDir


def cli(tmp_path: Path, *extra: str) -> list[str]:
    return tiny_cli(tmp_path, "--image", "astronaut", *extra)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("pruned", [False, True])
def test_checkpointed_net_is_bit_identical(groups: int, pruned: bool) -> None:
    """The recomputed forward is the forward: the output and every gradient are equal to the
    last bit (fp32, the full five-scale net on odd sides, one net or two grouped), and
    BatchNorm's running statistics are updated once, as without checkpointing. Pruned (the
    lottery prior's masks, a forward pre-hook on every conv): the same."""
    torch.manual_seed(0)
    nets = [SkipNet(32, 3, width=8, groups=groups), SkipNet(32, 3, width=8, groups=groups)]
    nets[1].load_state_dict(nets[0].state_dict())
    if pruned:
        for net in nets:
            for module in net.modules():
                if isinstance(module, torch.nn.Conv2d):
                    mask = torch.rand(
                        module.weight.shape, generator=torch.Generator().manual_seed(1)
                    )
                    prune.custom_from_mask(module, "weight", mask > 0.3)
    for module in nets[1].modules():
        if hasattr(module, "checkpointed"):
            module.checkpointed = True
    z = torch.rand(1, 32 * groups, 70, 45)
    outputs = []
    for net in nets:
        out = net(z)
        out.square().sum().backward()
        outputs.append(out)
    assert torch.equal(outputs[0], outputs[1])
    for (name, a), b in zip(nets[0].named_parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name
    for (name, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values(),
                            strict=True):  # fmt: skip
        assert torch.equal(a, b), name  # running statistics and num_batches_tracked included


def test_low_memory_history_equals_the_faithful_one() -> None:
    """A short fp32 run: the same history, row for row, and the same final weights."""
    cfg = RunConfig(width=6, num_iter=12, show_every=3, save_every=12).resolved()
    y = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    runs = []
    for speed in (Speed(), Speed.of(False, "cpu", low_memory=True)):
        model = build_model(cfg, (3, 64, 64), [0])
        [result] = fit_batch(model, y, cfg, seeds=[0], speed=speed, progress=False)
        runs.append((result.history, model.state_dict()))
    (faithful, a), (low, b) = runs
    assert faithful == low and len(low) == 5
    assert all(torch.equal(a[name], b[name]) for name in a)


PEAK = """import resource, sys
import denoising
code = denoising.main(sys.argv[1:])
print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"""


@pytest.mark.parametrize("crop", [128, 256])
def test_estimate_is_within_a_quarter_of_the_measured_peak(tmp_path: Path, crop: int) -> None:
    """The whole denoising.py process, in a subprocess of its own (ru_maxrss is a lifetime
    maximum), faithful path, width 64. Measured 2026-11-25: see docs/RESULTS.md, "Memory"."""
    args = cli(tmp_path, "--crop", str(crop), "--width", "64", "--num_iter", "3",
               "--show_every", "1")  # fmt: skip
    env = {"OMP_NUM_THREADS": "1", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", PEAK, *args], cwd=ROOT, capture_output=True,
                         text=True, check=True, env=env)  # fmt: skip
    code, peak = map(int, out.stdout.split()[-2:])
    assert code == 0
    estimated = float(re.search(r"estimated peak ([0-9.]+) GB", out.stdout)[1]) * memory.GB
    assert abs(estimated / peak - 1) <= 0.25, (estimated, peak)


def test_a_run_that_does_not_fit_is_refused_before_writing(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(memory.ENVIRONMENT, "1G")  # the device's available memory, injected
    assert denoising.main(cli(tmp_path, "--crop", "512", "--width", "128")) == 2
    out, err = capsys.readouterr()
    assert re.match(r"device: cpu.*; memory: estimated peak [0-9.]+ GB \(faithful path\) of "
                    r"1\.0 GB available", out)  # fmt: skip
    assert err.count("\n") == 1 and "needs about" in err
    assert "--low_memory" not in err or "--crop" in err  # what would fit is named
    assert re.search(r"--crop \d+", err) and re.search(r"--width \d+", err)
    assert not (tmp_path / "out").exists()  # nothing written, not even the noisy input


def test_the_advice_fits() -> None:
    """Every setting the refusal proposes is estimated to fit."""
    have = 8 * memory.GB  # the low-memory path fits it, the faithful one does not
    need = memory.Need(memory.estimate(1024**2, 128), 1024**2, 128, 1, "faithful")
    advice = memory.advice(need, have, 1024, 32)
    crop, width = (int(re.search(rf"--{flag} (\d+)", advice)[1]) for flag in ("crop", "width"))
    assert memory.estimate(crop**2, 128) <= have < memory.estimate((crop + 32) ** 2, 128)
    assert memory.estimate(1024**2, width) <= have < memory.estimate(1024**2, width + 1)
    assert "--low_memory (about" in advice


def test_the_estimate_is_the_priors() -> None:
    """The deep decoder's activations are its own (memory_scale: 1.24 GB measured at 512x512,
    3.86 at 1024x1024, k = 128; docs/RESULTS.md), and --low_memory, which changes nothing for
    it, is neither assumed nor proposed."""
    shape, cpu = (3, 1024, 1024), torch.device("cpu")
    decoder = RunConfig(prior="decoder", width=128, low_memory=True).resolved()
    need = memory_need(decoder, shape, cpu)
    skip = memory_need(RunConfig(prior="skip", width=128).resolved(), shape, cpu)
    assert need.path == "faithful" and need.bytes < 0.5 * skip.bytes
    advice = memory.advice(need, need.bytes // 2, 1024, 32)
    assert "--low_memory" not in advice and re.search(r"--crop \d+", advice)


def fail_after(iterations: int):
    """engine.loop.evaluate that fails like the CPU allocator after ``iterations`` calls."""
    calls, evaluate = [0], loop.evaluate

    def failing(loop, forward, *rest):
        calls[0] += 1
        if calls[0] > iterations:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                               "can't allocate memory: you tried to allocate 4294967296 bytes. "
                               "Error code 12 (Cannot allocate memory)")  # fmt: skip
        return evaluate(loop, forward, *rest)

    return failing


def test_out_of_memory_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys) -> None:
    """Failing at iteration 25: one line, exit 3, the checkpoint of iteration 20 kept; resumed
    with --low_memory it ends as an uninterrupted run does."""
    monkeypatch.setattr(loop, "evaluate", fail_after(25))
    assert denoising.main(cli(tmp_path, "--ckpt", "oom")) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory (an allocation of 4.0 GB failed)" in err
    assert "checkpoint (iteration 20) is kept" in err and "--resume and --low_memory" in err
    run = RunDir(tmp_path / "out", "oom")
    assert run.state()["iteration"] == 20 and not run.path("history").exists()
    monkeypatch.undo()
    assert denoising.main(cli(tmp_path, "--ckpt", "oom", "--resume", "--low_memory")) == 0
    assert denoising.main(cli(tmp_path, "--ckpt", "whole")) == 0
    whole = RunDir(tmp_path / "out", "whole")
    assert run.path("history").read_text() == whole.path("history").read_text()


def test_out_of_memory_before_a_checkpoint_leaves_nothing(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(loop, "evaluate", fail_after(0))
    assert denoising.main(cli(tmp_path, "--ckpt", "oom")) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nothing is kept" in err and "Traceback" not in err
    assert not list((tmp_path / "out").iterdir())  # the inputs it wrote are removed


def test_batches_shrink_to_what_fits(tmp_path, monkeypatch, capsys) -> None:
    cfg = RunConfig(width=4).resolved()
    one = memory_need(cfg, (3, 64, 64), torch.device("cpu")).bytes
    two = memory_need(cfg, (3, 64, 64), torch.device("cpu"), runs=2).bytes
    monkeypatch.setenv(memory.ENVIRONMENT, str((one + two) // 2))  # one run fits, two do not
    configs = [parse(cli(tmp_path, "--ckpt", f"r{seed}", "--seed", str(seed), "--num_iter", "5"))
               for seed in range(2)]  # fmt: skip
    assert [o.code for o in run(configs, max_batch=2)] == [0, 0]
    assert "batches of 1, not 2" in capsys.readouterr().out


@pytest.mark.slow  # two fresh processes: about 10 s on an idle machine, 30 s on a busy one
def test_benchmark_prints_the_paths_side_by_side(capsys) -> None:
    from benchmarks import memory as benchmark

    args = ["--gpu", "cpu", "--size", "64", "--width", "8", "--iters", "3", "--paths",
            "low_memory"]  # fmt: skip
    assert benchmark.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("device: cpu") and lines[1].split()[:3] == ["path", "peak", "GB"]
    rows = {line.split()[0]: line for line in lines[2:4]}
    assert rows["low_memory"].endswith("identical to faithful")
    assert re.fullmatch(r"memory [0-9.]+ time [0-9.]+ cpu [0-9.]+", lines[-1])


def test_the_largest_side_of_the_table_is_the_last_that_fits(capsys) -> None:
    from benchmarks import memory as benchmark

    assert benchmark.main(["--table"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| 128 |"))
    sides = [int(v) for v in re.findall(r"\d+", row.split("|")[2])]  # the 22 GB column
    for side, path in zip(sides, memory.PATHS, strict=True):
        assert benchmark.estimated_gb(side, 128, path) <= 22 < benchmark.estimated_gb(
            side + 32, 128, path)  # fmt: skip


@pytest.mark.parametrize("stride", [1, 2])
def test_weight_gradient_in_bands_is_the_same_sum(monkeypatch, stride: int) -> None:
    """Past oneDNN's limit the weight gradient is summed over bands of rows (models.skip): on an
    odd size, grouped, with bands of a few rows, it equals the one-call gradient up to rounding."""
    from models import skip

    torch.manual_seed(0)
    x = torch.randn(1, 6, 37, 29, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    grad = torch.randn(1, 4, (37 - 3) // stride + 1, (29 - 3) // stride + 1, dtype=torch.float64)
    arguments = ([4], (stride, stride), (0, 0), (1, 1), False, (0, 0), 2)
    whole = skip._weight_gradient(grad, x, weight, arguments, [False, True, True])
    monkeypatch.setattr(skip, "ONEDNN_INPUT_LIMIT", x.numel() * x.element_size() - 1)
    monkeypatch.setattr(skip, "WEIGHT_GRADIENT_BAND", x.numel() * x.element_size() // 5)
    banded = skip._weight_gradient(grad, x, weight, arguments, [False, True, True])
    for one, summed in zip(whole, banded, strict=True):
        torch.testing.assert_close(summed, one, rtol=1e-12, atol=1e-12)
