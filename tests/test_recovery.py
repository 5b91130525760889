import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recovery import METHODS, FitConfig, build_model, fit, lr_c_for_size, make_optimizer
from tests.conftest import DEVICES


def small_problem(seed: int = 0, size: int = 40, channels: int = 3):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(1, channels, size, size, generator=g)
    noisy = torch.where(
        torch.rand(clean.shape, generator=g) < 0.3,
        torch.rand(clean.shape, generator=g).round(),
        clean,
    )
    return noisy, clean


def run(method: str, num_iter: int, seed: int = 0, state=None, checkpoint=None, device="cpu"):
    y, clean = small_problem()
    m = METHODS[method]
    model = build_model(tuple(y.shape[1:]), sparse=m.sparse, width=4, seed=seed, scales=3).to(
        device
    )
    cfg = FitConfig(loss=m.loss, num_iter=num_iter, show_every=5, save_every=10)
    return fit(model, y.to(device), clean.to(device), cfg, seed=seed, state=state,
               checkpoint=checkpoint, progress=False)  # fmt: skip


def test_methods_are_configurations_of_one_model() -> None:
    shape = (3, 40, 40)
    dop = build_model(shape, sparse=True, width=4, seed=0, scales=3)
    dip = build_model(shape, sparse=False, width=4, seed=0, scales=3)
    net_params = sum(p.numel() for p in dip.parameters())
    assert sum(p.numel() for p in dop.parameters()) == net_params + 2 * 3 * 40 * 40
    assert dop.g.abs().max() < 1e-4  # the small init: N(0, 1)·1e-5
    groups = make_optimizer(dop, FitConfig(lr=1.0, lr_c=500.0)).param_groups
    assert [g["lr"] for g in groups] == [1.0, 500.0]
    assert groups[1]["params"] == [dop.g, dop.h] and groups[0]["momentum"] == 0
    assert len(make_optimizer(dip, FitConfig()).param_groups) == 1
    assert METHODS["dip-l1"].loss == "l1" and not METHODS["dip-l1"].sparse


def test_same_init_for_all_methods_and_devices_from_one_seed() -> None:
    a = build_model((3, 40, 40), sparse=True, width=4, seed=5, scales=3)
    b = build_model((3, 40, 40), sparse=False, width=4, seed=5, scales=3)
    for (name, pa), (_, pb) in zip(a.net.named_parameters(), b.net.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    assert torch.equal(a.z, b.z)


def test_padded_canvas_is_cropped_back_to_the_image() -> None:
    model = build_model((1, 40, 45), sparse=True, width=4, seed=0, net_size=(64, 64))
    x, prediction = model(torch.zeros_like(model.z))
    assert model.z.shape[-2:] == (64, 64)
    assert x.shape == prediction.shape == (1, 1, 40, 45)
    full = model.net(model.z)
    torch.testing.assert_close(x, full[..., 12:52, 9:54])


def test_prediction_is_network_plus_sparse_term() -> None:
    model = build_model((3, 40, 40), sparse=True, width=4, seed=0, scales=3)
    with torch.no_grad():
        model.g.fill_(0.5)
        model.h.fill_(0.25)
    x, prediction = model(torch.zeros_like(model.z))
    torch.testing.assert_close(prediction - x, torch.full_like(x, 0.25 - 0.0625))


@pytest.mark.parametrize("sizes", [((3, 64, 64), (3, 512, 512)), ((1, 40, 50), (3, 96, 128))])
def test_scaled_lr_c_moves_g_equally_on_any_size(sizes) -> None:
    """With lr_c scaled by size, one SGD step moves each entry of g by the same amount for the
    same residual, whatever the number of entries n averaged by the loss."""
    steps = []
    for shape in sizes:
        g = torch.full((1, *shape), 0.1, requires_grad=True)
        loss = F.mse_loss(g * g, torch.full_like(g, 0.5))
        loss.backward()
        steps.append(lr_c_for_size(500.0, g.numel()) * g.grad[0, 0, 0, 0].item())
    assert steps[0] == pytest.approx(steps[1], rel=1e-5)
    assert lr_c_for_size(500.0, 3 * 512 * 512) == 500.0


def test_same_seed_same_history_and_other_seed_differs() -> None:
    a, b, c = run("dop", 15), run("dop", 15), run("dop", 15, seed=1)
    assert a.history == b.history
    np.testing.assert_array_equal(a.image, b.image)
    assert a.history != c.history


@pytest.mark.parametrize("method", ["dop", "dip-l1"])
def test_resume_from_a_checkpoint_continues_exactly(method: str) -> None:
    saved = {}

    def keep(state: dict) -> None:  # serialise, as the CLI does, so later steps cannot alter it
        buffer = io.BytesIO()
        torch.save(state, buffer)
        saved[state["iteration"]] = buffer.getvalue()

    whole = run(method, 32, checkpoint=keep)
    assert sorted(saved) == [10, 20, 30, 32]
    state = torch.load(io.BytesIO(saved[20]), weights_only=False)
    resumed = run(method, 32, state=state)
    assert resumed.history == whole.history
    np.testing.assert_array_equal(resumed.image, whole.image)


def test_history_logs_the_grid_and_the_last_iteration() -> None:
    result = run("dip", 12)
    assert [row[0] for row in result.history] == [0, 5, 10, 11]
    assert result.iterations == 12 and result.diverged_at is None


def test_divergence_stops_and_keeps_the_last_finite_output() -> None:
    y, clean = small_problem()
    model = build_model(tuple(y.shape[1:]), sparse=True, width=4, seed=0, scales=3)
    cfg = FitConfig(num_iter=60, show_every=5, lr=1.0, lr_c=1e9)
    result = fit(model, y, clean, cfg, progress=False)
    assert result.diverged_at is not None and result.diverged_at < 60
    assert all(np.isfinite(row[1]) for row in result.history)
    assert np.isfinite(result.image).all()


@pytest.mark.gpu
def test_hot_loop_does_not_synchronise() -> None:
    """The number of host-device syncs does not grow with the iterations between logs."""
    counts = []
    for num_iter in (6, 26):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with pytest.warns(UserWarning) as record:
                y, clean = small_problem()
                model = build_model((3, 40, 40), sparse=True, width=4, seed=0, scales=3).cuda()
                cfg = FitConfig(num_iter=num_iter, show_every=1000, save_every=1000)
                fit(model, y.cuda(), clean.cuda(), cfg, progress=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in record))
    assert counts[0] == counts[1]


@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_each_device(device: str) -> None:
    result = run("dop", 6, device=device)
    assert result.image.shape == (3, 40, 40) and [r[0] for r in result.history] == [0, 5]
