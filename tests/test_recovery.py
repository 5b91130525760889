"""The engine: its parts, the loop, resume, divergence, seeds, and parts plugged in from outside."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.config import RunConfig
from engine.loop import Model, Speed, build_model, fit, fit_batch, make_optimizer, precision
from models import PRIORS, Prior, SkipPrior
from tests.conftest import DEVICES, SHAPE, config, keep_by_iteration, small_problem
from utils.observers import Observer
from utils.seeding import STREAMS, derive_seed


def run(cfg: RunConfig, seed: int = 0, device: str = "cpu", **options):
    y, clean = small_problem()
    model = build_model(cfg, SHAPE, [seed], scales=3).to(device)
    return fit(model, y.to(device), cfg, seed=seed, clean=clean.to(device), progress=False,
               **options)  # fmt: skip


def test_methods_are_configurations_of_one_model() -> None:
    dop = build_model(config(method="dop"), SHAPE, [0], scales=3)
    dip = build_model(config(method="dip"), SHAPE, [0], scales=3)
    assert sum(p.numel() for p in dop.parameters()) == sum(
        p.numel() for p in dip.parameters()
    ) + 2 * np.prod(SHAPE)
    assert dop.sparse.g.abs().max() < 1e-4 and dip.sparse is None  # the small init N(0,1)·1e-5
    groups = make_optimizer(dop, config(method="dop").resolved()).param_groups
    assert [g["lr"] for g in groups] == [1.0, 500.0] and groups[0]["momentum"] == 0
    assert groups[1]["params"] == [dop.sparse.g, dop.sparse.h]
    assert len(make_optimizer(dip, config(method="dip").resolved()).param_groups) == 1


def test_prediction_is_operator_of_x_plus_sparse_term() -> None:
    model = build_model(config(), SHAPE, [0], scales=3)
    with torch.no_grad():
        model.sparse.g.fill_(0.5)
        model.sparse.h.fill_(0.25)
    x, prediction = model(None)
    torch.testing.assert_close(prediction - x, torch.full_like(x, 0.25 - 0.0625))


def test_padded_canvas_is_cropped_back_to_the_image() -> None:
    prior = SkipPrior((1, 40, 45), width=4, seeds=[0], pad=True)
    assert prior.input.shape[-2:] == (64, 64)
    x = prior(None)
    assert x.shape == (1, 1, 40, 45)
    torch.testing.assert_close(x, prior.net(prior.input)[..., 12:52, 9:54])


def test_weights_input_and_sparse_init_come_from_independent_streams() -> None:
    """One seed feeds several streams; no tensor is drawn from another's stream. Drawn from one
    stream, the first uniform draws of z and of the first initialised weights are affine copies
    of each other (correlation ±1); from independent streams they are uncorrelated."""
    assert len({derive_seed(s, name) for s in range(3) for name in STREAMS}) == 3 * len(STREAMS)
    model = build_model(config(width=16), SHAPE, [0], scales=3)
    z = model.prior.input.flatten().numpy()
    for name, p in model.prior.named_parameters():
        if p.dim() > 1 and p.numel() >= 64:  # the convolutions' uniformly drawn weights
            n = min(256, p.numel())
            corr = np.corrcoef(z[:n], p.detach().flatten()[:n].numpy())[0, 1]
            assert abs(corr) < 0.6, name  # one stream gave 1.0; independent ones < 0.18 (seeds 0-4)
    n = 256
    g = model.sparse.g.detach().flatten()[:n].numpy()
    assert abs(np.corrcoef(g, model.sparse.h.detach().flatten()[:n].numpy())[0, 1]) < 0.5


def test_same_seed_same_history_and_another_seed_differs() -> None:
    a, b, c = run(config(num_iter=15)), run(config(num_iter=15)), run(config(num_iter=15), seed=1)
    assert a.history == b.history
    np.testing.assert_array_equal(a.image, b.image)
    assert a.history != c.history


@pytest.mark.parametrize("scaling,expected", [("none", 500.0), ("n", 500 / 64), ("sqrt", 62.5)])
def test_lr_c_scaling_rules(scaling: str, expected: float) -> None:
    cfg = RunConfig(lr_c=500.0, lr_c_scaling=scaling)
    assert cfg.lr_c_used(3 * 64 * 64) == pytest.approx(expected)
    assert cfg.lr_c_used(3 * 512 * 512) == 500.0  # the public code's size: every rule agrees
    model = build_model(RunConfig(width=4).resolved(), (3, 64, 64), [0], scales=3)
    assert make_optimizer(model, cfg.resolved()).param_groups[1]["lr"] == pytest.approx(expected)


@pytest.mark.parametrize("sizes", [((3, 64, 64), (3, 512, 512)), ((1, 40, 50), (3, 96, 128))])
def test_n_scaled_lr_c_moves_g_equally_on_any_size(sizes) -> None:
    """With --lr_c_scaling n, one SGD step moves each entry of g by the same amount for the same
    residual, whatever the number of entries n averaged by the loss."""
    steps = []
    for shape in sizes:
        g = torch.full((1, *shape), 0.1, requires_grad=True)
        F.mse_loss(g * g, torch.full_like(g, 0.5)).backward()
        lr_c = RunConfig(lr_c_scaling="n").lr_c_used(g.numel())
        steps.append(lr_c * g.grad[0, 0, 0, 0].item())
    assert steps[0] == pytest.approx(steps[1], rel=1e-5)


@pytest.mark.parametrize("settings", [{"method": "dop"}, {"method": "dip", "loss": "l1"},
                                      {"method": "dop", "alg": "adam", "lr": 0.01}])  # fmt: skip
def test_resume_from_a_checkpoint_continues_exactly(settings: dict) -> None:
    saved: dict = {}
    whole = run(config(num_iter=32, **settings), checkpoint=keep_by_iteration(saved))
    assert sorted(saved) == [10, 20, 30, 32]
    resumed = run(config(num_iter=32, **settings), state=saved[20])
    assert resumed.history == whole.history
    np.testing.assert_array_equal(resumed.image, whole.image)


def test_history_logs_the_grid_and_the_last_iteration() -> None:
    result = run(config(num_iter=12, method="dip"))
    assert [row["iteration"] for row in result.history] == [0, 5, 10, 11]
    assert list(result.history[0]) == ["iteration", "loss", "psnr", "ssim"]
    assert result.iterations == 12 and result.diverged_at is None


def test_without_a_clean_image_only_the_loss_is_logged() -> None:
    y, _ = small_problem()
    cfg = config(num_iter=6)
    result = fit(build_model(cfg, SHAPE, [0], scales=3), y, cfg, progress=False)
    assert [list(row) for row in result.history] == [["iteration", "loss"]] * 2
    assert result.image.shape == SHAPE


def test_divergence_stops_and_keeps_the_last_finite_output() -> None:
    result = run(config(num_iter=60, lr_c=1e9))
    assert result.diverged_at is not None and result.diverged_at < 60
    assert all(np.isfinite(row["loss"]) for row in result.history)
    assert np.isfinite(result.image).all()


def test_faithful_path_turns_tf32_off_and_fast_gpu_path_on() -> None:
    """PyTorch lets cuDNN use TF32 for fp32 convolutions by default; the loop sets it per path,
    with cuDNN's autotuner on the fast path only, and restores both (the flags can be set
    without a GPU; the fast path's of an Ampere GPU)."""
    cudnn = torch.backends.cudnn
    before = cudnn.allow_tf32, cudnn.benchmark
    fast = Speed.of(True, "cuda", capability=(8, 0))
    for speed, expected in ((Speed.of(False, "cuda"), False), (fast, True)):
        with precision(speed):
            assert cudnn.allow_tf32 is expected
            assert torch.backends.cuda.matmul.allow_tf32 is expected
            assert cudnn.benchmark is expected
        assert (cudnn.allow_tf32, cudnn.benchmark) == before
    assert not Speed.of(True, "cpu").tf32


class OneLayer(Prior):
    """A toy prior: x = sigmoid(W z + b), a 1x1 convolution of a fixed input z, one per run
    (runs along dimension 0, as the prior contract asks); the bias b is frozen."""

    defaults = {"alg": "sgd", "lr": 0.5, "reg_noise_std": 0.05}

    def __init__(self, image_shape, *, width=4, seeds=(0,), pad=False) -> None:
        super().__init__()
        channels, h, w = image_shape
        runs = len(seeds)
        self.register_buffer("input", torch.rand(runs, width, h, w))
        self.weight = nn.Parameter(torch.randn(runs, channels, width) * 0.5)
        self.bias = nn.Parameter(torch.randn(runs, channels), requires_grad=False)

    def forward(self, eta):
        z = self.input if eta is None else self.input + eta
        return torch.sigmoid(torch.einsum("kihw,koi->kohw", z, self.weight)
                             + self.bias[..., None, None])  # fmt: skip


class Drift(Observer):
    """A toy observer: the running mean of the iterates, and how far x is from it."""

    def __init__(self, runs: int) -> None:
        super().__init__()
        self.register_buffer("total", torch.zeros(runs, *SHAPE))
        self.register_buffer("seen", torch.zeros(runs))
        self.register_buffer("drift", torch.zeros(runs))

    def update(self, iteration: int, x: Tensor, loss: Tensor | None = None) -> None:
        self.total += x
        self.seen += 1
        self.drift = (x - self.total / self.seen[:, None, None, None]).abs().flatten(1).mean(1)

    def columns(self) -> dict[str, Tensor]:
        return {"seen": self.seen, "drift": self.drift}


def test_a_toy_prior_and_a_toy_observer_plug_in_without_editing_the_loop(monkeypatch) -> None:
    """A prior is a registry entry (its defaults then resolve the settings); an observer is
    passed to the loop."""
    monkeypatch.setitem(PRIORS, "one-layer", OneLayer)
    y, clean = small_problem(runs=2)
    torch.manual_seed(0)
    model = Model(OneLayer(SHAPE, seeds=[0, 1]))
    bias = model.prior.bias.clone()
    cfg = config(num_iter=21, method="dip", prior="one-layer")
    optimizer = make_optimizer(model, cfg)
    assert optimizer.param_groups[0]["lr"] == 0.5  # the prior's default step
    assert optimizer.param_groups[0]["params"] == [model.prior.weight]
    saved: list = []
    results = fit_batch(model, y, cfg, seeds=[0, 1], clean=clean, observers=[Drift(2)],
                        checkpoint=saved.append, progress=False)  # fmt: skip
    assert torch.equal(model.prior.bias, bias)  # frozen: not trained, not even held
    for result in results:
        assert [row["seen"] for row in result.history] == [1, 6, 11, 16, 21]  # every iterate
        assert result.history[-1]["drift"] > 0 and result.history[-1]["psnr"] > 0
    # its state is checkpointed per run: resuming run 1 alone gives the same rows
    torch.manual_seed(0)
    alone = Model(OneLayer(SHAPE, seeds=[1]))
    resumed = fit_batch(alone, y[1:], cfg, seeds=[1], clean=clean[1:], observers=[Drift(1)],
                        states=[saved[1][1]], progress=False)  # fmt: skip
    assert [r["seen"] for r in resumed[0].history] == [r["seen"] for r in results[1].history]
    np.testing.assert_allclose([r["drift"] for r in resumed[0].history],
                               [r["drift"] for r in results[1].history], rtol=1e-5)  # fmt: skip


@pytest.mark.gpu
def test_hot_loop_does_not_synchronise() -> None:
    """The number of host-device syncs does not grow with the iterations between logged rows,
    with an observer and metrics on."""
    counts = []
    for num_iter in (6, 26):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with pytest.warns(UserWarning) as record:
                run(config(num_iter=num_iter, show_every=1000, save_every=1000), device="cuda",
                    observers=[Drift(1)])  # fmt: skip
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in record))
    assert counts[0] == counts[1]


@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_each_device(device: str) -> None:
    result = run(config(num_iter=6), device=device)
    assert result.image.shape == SHAPE and [r["iteration"] for r in result.history] == [0, 5]
