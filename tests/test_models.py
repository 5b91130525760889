import pytest
import torch

from models import SkipNet, SkipPrior, min_input_size
from tests.conftest import DEVICES
from utils.state import unstack_state


@pytest.mark.parametrize("width,millions", [(64, 0.57), (128, 2.22), (192, 4.94)])
def test_parameter_count_matches_the_paper_network(width: int, millions: float) -> None:
    n = sum(p.numel() for p in SkipNet(width=width).parameters())
    assert round(n / 1e6, 2) == millions


def test_structure_of_one_scale() -> None:
    net = SkipNet(width=8)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    # per scale: skip 1x1, two 3x3 down (first stride 2), 3x3 + 1x1 up; plus the 1x1 head
    assert len(convs) == 5 * 5 + 1
    assert all(c.padding_mode == "reflect" for c in convs if c.kernel_size == (3, 3))
    assert sum(c.stride == (2, 2) for c in convs) == 5
    assert isinstance(net.head[-1], torch.nn.Sigmoid)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(33, 33), (37, 50), (64, 64), (100, 77)])
@pytest.mark.parametrize("channels", [1, 3])
def test_any_size_in_same_size_out(size: tuple[int, int], channels: int, device: str) -> None:
    torch.manual_seed(0)
    net = SkipNet(in_channels=32, out_channels=channels, width=4).to(device)
    out = net(torch.rand(1, 32, *size, device=device))
    assert out.shape == (1, channels, *size)
    assert out.min() > 0 and out.max() < 1  # sigmoid head


def test_smallest_size() -> None:
    net = SkipNet(width=4, scales=3)
    s = min_input_size(3)
    assert net(torch.rand(1, 32, s, s)).shape[-1] == s
    with pytest.raises((ValueError, RuntimeError)):
        net(torch.rand(1, 32, s - 1, s - 1))


def test_bad_sizes_rejected() -> None:
    with pytest.raises(ValueError):
        SkipNet(width=0)


def test_a_prior_of_k_runs_is_the_k_single_runs_side_by_side() -> None:
    state = torch.random.get_rng_state()
    batch = SkipPrior((3, 45, 37), width=4, seeds=[3, 5], scales=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global stream is untouched
    parts = unstack_state(batch.state_dict(), 2)
    for part, seed in zip(parts, [3, 5], strict=True):
        alone = SkipPrior((3, 45, 37), width=4, seeds=[seed], scales=3).state_dict()
        assert part.keys() == alone.keys()
        for name, value in alone.items():
            assert torch.equal(part[name], value), name
    x = batch(None)
    assert x.shape == (2, 3, 45, 37)


def test_smallest_side_of_the_skip_prior() -> None:
    assert SkipPrior.multiple == 32
    assert SkipPrior.smallest_side(pad=False) == 64  # a multiple of 32 that 5 scales accept
    assert SkipPrior.smallest_side(pad=True) == 1
