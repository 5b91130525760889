"""The CUDA paths, checked on the CPU wherever the mechanism runs there (fakes stand in for the
CUDA calls), and on a GPU where it does not (marked gpu): resuming on another device type, the
32-bit index limit, optimizer state laid out like its parameters, --fast by compute capability,
--deterministic, the memory a GPU has, GPU slots for subprocesses, and the smoke script."""

import dataclasses
import random
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import denoising
from benchmarks import gpu_smoke
from engine import loop as engine_loop
from engine.config import RunConfig
from engine.device import check_fits, fitting_batch, memory_need, pick_device, use_device
from engine.loop import Speed, build_model, fit, precision, start_loop
from experiments import driver
from experiments.driver import Setting
from experiments.sets import Case, figure_runs
from models import PRIORS, SkipPrior
from models import skip as skip_net
from tests.conftest import (
    IMAGE,
    SHAPE,
    cli,
    config,
    keep_by_iteration,
    outputs,
    roundtrip,
    small_problem,
    tiny_profile,
)
from utils import InputError, memory
from utils.state import generator_device, unstack_state

CUDA = torch.device("cuda", 0)  # a device that never computes here: the checks before a run


def argv(tmp_path: Path, *extra: str) -> list[str]:
    """A tiny denoising.py command line on the tests' image."""
    return cli(tmp_path, "--image", IMAGE, *extra)


# --- resuming on another device type


@pytest.mark.parametrize("recorded", [False, True])
def test_a_checkpoint_drawn_on_another_device_type_is_refused_in_one_line(
    tmp_path: Path, capsys, recorded: bool
) -> None:
    """A GPU's checkpoint (its η generator's state: 16 bytes, CUDA's Philox) resumed on the CPU:
    refused in one line that says what to do, nothing written; told by the recorded device
    type or, in a checkpoint from before it was recorded, by the state's size."""
    assert denoising.main(argv(tmp_path, "--num_iter", "20")) == 0
    run = outputs(tmp_path)
    state = run.state()
    assert state["eta_device"] == "cpu" and generator_device(state) == "cpu"
    state["generator"] = torch.zeros(16, dtype=torch.uint8)  # what a CUDA generator saves
    if recorded:
        state["eta_device"] = "cuda"
    else:
        del state["eta_device"]
    torch.save(state, run.path("state"))
    history = run.path("history").read_bytes()
    capsys.readouterr()
    assert denoising.main(argv(tmp_path, "--num_iter", "30", "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "drew its input perturbation on a cuda device" in err and "--gpu N" in err
    assert run.path("history").read_bytes() == history and run.state()["iteration"] == 20
    # the loop itself refuses it too, before set_state's own error
    cfg = config(num_iter=30)
    y, clean = small_problem()
    with pytest.raises(ValueError, match="drawn on cuda cannot go on on cpu"):
        fit(build_model(cfg, SHAPE, [0], scales=3), y, cfg, state=state, progress=False)


def test_checkpoints_are_host_copies_in_their_source_layout() -> None:
    """Each run's state is a copy (saving one run never writes the batch's storage) that keeps
    the channels-last layout of its source."""
    weight = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)
    state = {"w": weight, "step": torch.tensor(3.0), "lr": 0.1}
    parts = unstack_state(state, 2)
    for k, part in enumerate(parts):
        assert part["w"].device.type == "cpu" and part["lr"] == 0.1
        assert part["w"].stride() == weight.chunk(2)[k].stride()
        assert part["w"].untyped_storage().data_ptr() != weight.untyped_storage().data_ptr()
        torch.testing.assert_close(part["w"], weight.chunk(2)[k], rtol=0, atol=0)
    parts[0]["w"].zero_()
    assert weight.abs().sum() > 0


# --- optimizer state laid out like its parameters (--fast added when resuming)


def test_adam_state_follows_channels_last_parameters_when_resumed() -> None:
    """An Adam run saved with contiguous weights, resumed with channels-last ones (what --fast
    does on a GPU, whose fused Adam refuses mixed layouts): every moment has its parameter's
    strides, and the history is the one the moments in the checkpoint's layout give."""
    y, clean = small_problem()
    cfg = config(alg="adam", lr=0.01, num_iter=20)
    saved: dict = {}
    fit(build_model(cfg, SHAPE, [0], scales=3), y, cfg, clean=clean, progress=False,
        checkpoint=keep_by_iteration(saved))  # fmt: skip
    longer = dataclasses.replace(cfg, num_iter=30)
    fast = Speed(channels_last=True)
    model = build_model(longer, SHAPE, [0], scales=3)
    loop = start_loop(model, y, longer, [0], clean, [], [saved[20]], fast)
    weights = [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] == 3]
    assert weights and all(not p.is_contiguous() for p in weights)  # channels-last, really
    for param, state in loop.optimizer.state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key].stride() == param.stride(), key
    histories = []
    for relayout in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            if not relayout:
                patch.setattr(engine_loop, "lay_out_like_parameters", lambda optimizer: None)
            result = fit(build_model(longer, SHAPE, [0], scales=3), y, longer, clean=clean,
                         state=roundtrip(saved[20]), speed=fast, progress=False)  # fmt: skip
        histories.append(result.history)
    assert histories[0] == histories[1] and histories[0][-1]["iteration"] == 29


# --- CUDA's 32-bit index limit


def test_the_index_limit_is_a_pure_function_of_the_batch() -> None:
    """K batched runs of the skip net put K·(width + skip)·(H + 2)·(W + 2) elements in the
    merge convolution's padded input; CUDA's reflection padding takes fewer than 2³¹ − 1."""
    assert memory.within_index_limit(2**31 - 2) and not memory.within_index_limit(2**31 - 1)
    elements = SkipPrior.indexed_elements
    assert elements(128, (1024, 1024), {}) == 132 * 1026 * 1026
    assert memory.within_index_limit(elements(128, (4000, 4000), {}))
    assert not memory.within_index_limit(elements(128, (4032, 4032), {}))
    assert memory.most_indexable_runs(elements(128, (1024, 1024), {})) == 15  # not 16
    assert memory.most_indexable_runs(elements(128, (2048, 2048), {})) == 3  # not 4
    assert memory.most_indexable_runs(elements(128, (4096, 4096), {})) == 0  # not even one
    selfdeblur = elements(128, (255, 255), {"skip": 16, "input_depth": 8})
    assert selfdeblur == 144 * 257 * 257
    assert elements(16, (99, 99), {}) == 32 * 101 * 101  # the input's padded copy is wider
    assert PRIORS["decoder"].indexed_elements(128, (100, 70), {}) == 128 * 128 * 96
    assert memory.most_indexable_runs(0) == memory.INDEX_LIMIT


def test_a_gpu_run_past_the_index_limit_is_refused_with_what_fits(monkeypatch, capsys) -> None:
    """4032x4032 at width 128 with --low_memory fits 80 GB by the estimate but not CUDA's
    indexing: refused before anything is written, proposing a crop and a width within both;
    the same run on the CPU (no such limit) passes the check."""
    monkeypatch.setenv(memory.ENVIRONMENT, "80G")
    cfg = RunConfig(low_memory=True, ckpt="big").resolved()
    shape = (3, 4032, 4032)
    check_fits(cfg, shape, torch.device("cpu"), "cpu")
    with pytest.raises(InputError, match=r"too large for a GPU.*2\^31") as refused:
        check_fits(cfg, shape, CUDA, "cuda:0 (fake)")
    fitting = str(refused.value).split("would fit:")[1]
    crop = int(re.search(r"--crop (\d+)", fitting)[1])
    width = int(re.search(r"--width (\d+)", fitting)[1])
    assert crop == 4000 and width == 127  # the largest of each within the limit
    assert memory.within_index_limit(SkipPrior.indexed_elements(128, (crop, crop), {}))
    assert not memory.within_index_limit(SkipPrior.indexed_elements(width + 1, shape[1:], {}))


def test_gpu_batches_split_at_the_index_limit(monkeypatch, capsys) -> None:
    monkeypatch.setenv(memory.ENVIRONMENT, "10T")  # memory is not what limits these batches
    cfg = RunConfig(low_memory=True).resolved()
    assert fitting_batch(cfg, (3, 1024, 1024), CUDA, 16) == 15
    assert "stay below CUDA's 2^31 elements" in capsys.readouterr().out
    assert fitting_batch(cfg, (3, 1024, 1024), torch.device("cpu"), 16) == 16
    assert memory_need(cfg, (3, 1024, 1024), CUDA, 15).fits(memory.parse_size("10T"))


# --- the memory a run needs and a GPU has


def test_the_estimate_counts_what_the_observers_keep() -> None:
    """ES-WMV's ring of W outputs (≈ 315 MB a run at 3x512x512, W = 100), its float64 sums and
    detected image; ES-EMV's average, the detected image and the other image reported beside it
    (x or the average); per run."""
    shape, cpu = (3, 512, 512), torch.device("cpu")
    image = 3 * 512 * 512 * 4  # bytes of one float32 image
    plain = memory_need(RunConfig().resolved(), shape, cpu, runs=2).bytes
    wmv = memory_need(RunConfig(stop="wmv").resolved(), shape, cpu, runs=2).bytes - plain
    emv = memory_need(RunConfig(stop="emv").resolved(), shape, cpu, runs=2).bytes - plain
    assert 2 * (100 + 1 + 4) * image <= wmv < 2 * (100 + 1 + 4) * image + 1024
    assert 2 * 3 * image <= emv < 2 * 3 * image + 1024
    assert 100 * image == pytest.approx(315e6, rel=0.01)


def test_gpu_memory_available_counts_what_the_allocator_caches(monkeypatch) -> None:
    monkeypatch.delenv(memory.ENVIRONMENT, raising=False)
    gb = memory.GB
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * gb, 80 * gb))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 6 * gb)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2 * gb)
    assert memory.available(CUDA) == 14 * gb


@pytest.mark.parametrize("text", [
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported",
    "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory",
])  # fmt: skip
def test_allocation_failures_are_out_of_memory(text: str) -> None:
    err = RuntimeError(text)
    assert memory.is_out_of_memory(err)
    assert "\n" not in memory.describe_failure(err)


def test_other_errors_are_not_out_of_memory() -> None:
    assert not memory.is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM"))
    assert not memory.is_out_of_memory(ValueError("out of memory"))


# --- --fast by compute capability, cuDNN's autotuner, --deterministic


@pytest.mark.parametrize("capability, ampere, compiles", [
    ((9, 0), True, True), ((8, 0), True, True), ((7, 5), False, True), ((6, 1), False, False),
])  # fmt: skip
def test_fast_gpu_path_by_compute_capability(capability, ampere: bool, compiles: bool) -> None:
    """bf16 (with channels-last and TF32) from 8.0, torch.compile from 7.0; fused steps and
    cuDNN's autotuner on every GPU; --deterministic drops the autotuner and compilation."""
    speed = Speed.of(True, "cuda", capability=capability)
    assert speed.bf16 is speed.channels_last is speed.tf32 is ampere
    assert speed.compile is compiles and speed.fused and speed.benchmark
    assert not Speed.of(True, "cuda", True, capability=capability).compile  # --low_memory
    strict = Speed.of(True, "cuda", deterministic=True, capability=capability)
    assert strict.deterministic and not (strict.benchmark or strict.compile)
    assert strict.bf16 is ampere
    faithful = Speed.of(False, "cuda", capability=capability)
    assert not (faithful.benchmark or faithful.bf16 or faithful.tf32 or faithful.compile)


def test_the_device_capability_decides_when_not_given(monkeypatch) -> None:
    """Asked of the run's own device: a Turing GPU (7.5) gets no bf16, so its memory estimate
    is the faithful path's, not bf16's."""
    asked = []

    def capability(device):
        asked.append(torch.device(device))
        return (7, 5)

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    assert not Speed.of(True, torch.device("cuda", 1)).bf16
    assert asked == [torch.device("cuda", 1)]
    need = memory_need(RunConfig(fast=True).resolved(), (3, 256, 256), CUDA)
    assert need.path == "faithful" and need.cuda
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (8, 0))
    assert memory_need(RunConfig(fast=True).resolved(), (3, 256, 256), CUDA).path == "fast"


def test_deterministic_sets_torch_and_cudnn_and_restores_them(monkeypatch) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "unset")  # restored after the test
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    cudnn = torch.backends.cudnn
    before = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    with precision(Speed.of(True, "cuda", deterministic=True, capability=(9, 0))):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # no kernel: warn, run
        assert cudnn.deterministic and not cudnn.benchmark
        assert engine_loop.os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    after = (cudnn.benchmark, cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    assert after == before


def test_a_deterministic_cpu_run_is_the_same_run(tmp_path: Path) -> None:
    """On the CPU every kernel the loop runs is deterministic already: --deterministic changes
    no bit of the history."""
    assert denoising.main(argv(tmp_path, "--ckpt", "plain", "--num_iter", "12")) == 0
    assert denoising.main(argv(tmp_path, "--ckpt", "strict", "--num_iter", "12",
                              "--deterministic")) == 0  # fmt: skip
    plain, strict = outputs(tmp_path, "plain"), outputs(tmp_path, "strict")
    assert plain.path("history").read_text() == strict.path("history").read_text()
    assert strict.config()["settings"]["deterministic"] is True


# --- the CPU-only weight-gradient bands


def test_weight_gradient_bands_are_for_the_cpu_only(monkeypatch) -> None:
    """oneDNN's input limit is the CPU's: a GPU's input (here a meta tensor) of any size is one
    call of the backward."""
    monkeypatch.setattr(skip_net, "ONEDNN_INPUT_LIMIT", 1000)
    monkeypatch.setattr(skip_net, "WEIGHT_GRADIENT_BAND", 500)
    assert skip_net._bands(torch.empty(1, 4, 20, 20)) == 13  # 6400 bytes in bands of 500
    assert skip_net._bands(torch.empty(1, 4, 20, 20, device="meta")) == 1
    assert skip_net._bands(torch.empty(1, 2, 5, 5)) == 1  # 200 bytes: below the limit


# --- GPU slots for subprocesses, and the device each one uses


@pytest.mark.parametrize("jobs", [2, 4])
def test_runs_never_stack_on_one_gpu_while_another_idles(monkeypatch, tmp_path, jobs) -> None:
    """reproduce.py --jobs N --gpu 0,1 with fake GPUs: N/2 slots per GPU, so each run starts on
    a GPU that holds fewer than N/2 runs (counted when each run registers, which lags the slot it
    took: never more than the truth), no GPU ever holds more, and both are used."""
    cases = {"fig3": tuple(Case(image, level) for image in ("cat", "coffee")
                           for level in (0.3, 0.5, 0.7)), "fig4": ()}  # fmt: skip
    runs = figure_runs(["fig3"], cases)
    busy, most, launched, lock = {"0": 0, "1": 0}, {"0": 0, "1": 0}, [], threading.Lock()
    durations = random.Random(0)

    def launch(cfg: RunConfig, threads: int) -> int:
        with lock:
            launched.append((cfg.gpu, busy[cfg.gpu] < jobs // 2))
            busy[cfg.gpu] += 1
            most[cfg.gpu] = max(most[cfg.gpu], busy[cfg.gpu])
            pause = durations.uniform(0.01, 0.08)
        time.sleep(pause)
        with lock:
            busy[cfg.gpu] -= 1
        return 0

    monkeypatch.setattr(driver, "launch", launch)
    setting = Setting(tiny_profile(20), tmp_path / "out", tmp_path, ("0", "1"))
    outcome = driver.run_all(runs, setting, jobs=jobs)
    assert len(outcome["started"]) == len(runs) == len(launched) >= 8
    assert all(free for _, free in launched), launched
    assert all(1 <= most[gpu] <= jobs // 2 for gpu in ("0", "1")), most


def test_a_cuda_run_makes_its_gpu_the_current_device(monkeypatch) -> None:
    """``--gpu 1`` (what a subprocess of reproduce.py --jobs gets from its slot), with two fake
    GPUs: GPU 1 becomes the current device; the CPU sets nothing."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Fake GPU")
    assert pick_device("1") == (torch.device("cuda", 1), "cuda:1 (Fake GPU)")
    assert pick_device("cpu")[0] == torch.device("cpu")
    use_device(torch.device("cpu"))
    use_device(torch.device("cuda", 0))
    assert chosen == [torch.device("cuda", 1), torch.device("cuda", 0)]


# --- the smoke script


def test_the_smoke_script_runs_every_path_tiny(capsys) -> None:
    assert gpu_smoke.main(["--gpu", "cpu", "--tiny"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("device: cpu") and lines[1].split()[:2] == ["check", "status"]
    rows = {line[:20].strip(): line[20:].split(maxsplit=4) for line in lines[2:-1]}
    assert {
        "faithful",
        "fast",
        "low_memory",
        "batched fast",
        "resume adam +fast",
        "prior lip",
        "task blind-deblur",
        "task zhuang dop",
        "task sr drp",
        "task phase",
        "stop sv",
    } <= set(rows)
    for name, (status, rate, seconds, peak, *_) in rows.items():
        gpu_only = name in ("resume on the CPU", "index limit")
        assert status == ("skipped" if gpu_only else "ok"), name
        assert gpu_only or float(rate) > 0 and float(seconds) > 0 and float(peak) > 0
    # on the CPU a run repeats itself, and --low_memory is the faithful run, to the last bit
    assert rows["faithful"][-1] == "run twice: same"
    assert rows["low_memory"][-1] == "vs faithful: same"
    assert rows["batched fast"][-1] == "batch sizes [4]"
    assert rows["resume adam +fast"][-1] == "resumed to iteration 6"
    assert re.fullmatch(r"24 of 24 checks ok in \d+ s", lines[-1])


# --- on a GPU


@pytest.mark.gpu
def test_our_index_limit_is_cudas() -> None:
    """CUDA's reflection padding takes an input of INDEX_LIMIT − 1 elements and refuses one of
    INDEX_LIMIT + 1 (half precision: 4 GB each)."""
    below = torch.empty(1, 1, 2, (memory.INDEX_LIMIT - 1) // 2, dtype=torch.half, device="cuda")
    F.pad(below, (1, 1, 1, 1), mode="reflect")
    del below
    above = torch.empty(1, 1, 2, (memory.INDEX_LIMIT + 1) // 2, dtype=torch.half, device="cuda")
    with pytest.raises(RuntimeError, match="32-bit index math"):
        F.pad(above, (1, 1, 1, 1), mode="reflect")


@pytest.mark.gpu
def test_gpu_checkpoints_are_in_host_memory() -> None:
    state = {"w": torch.randn(4, 3, device="cuda"), "step": torch.tensor(1.0, device="cuda")}
    for part in unstack_state(state, 2):
        assert part["w"].device.type == part["step"].device.type == "cpu"


@pytest.mark.gpu
def test_a_gpu_checkpoint_is_refused_on_the_cpu(tmp_path: Path, capsys) -> None:
    gpu = [a if a != "cpu" else "0" for a in argv(tmp_path, "--num_iter", "20")]
    assert denoising.main(gpu) == 0
    assert outputs(tmp_path).state()["eta_device"] == "cuda"
    assert denoising.main(argv(tmp_path, "--num_iter", "30", "--resume")) == 2
    assert "drew its input perturbation on a cuda device" in capsys.readouterr().err


@pytest.mark.gpu
def test_a_run_on_gpu_1_makes_it_current(tmp_path: Path) -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    on_1 = [a if a != "cpu" else "1" for a in argv(tmp_path, "--num_iter", "3")]
    assert denoising.main(on_1) == 0 and torch.cuda.current_device() == 1
    np.testing.assert_equal(outputs(tmp_path).config()["report"]["device"][:6], "cuda:1")
