"""The lottery image prior: IMP's sparsity schedule, rewinding, masks kept through training and
resume, mask files, the random-mask baseline (models/lip.py, lip.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import denoising
import lip
from engine.config import RunConfig
from engine.loop import build_model, fit
from experiments.imp import load_targets, mask_path
from models import SkipPrior
from models.decoder import parameter_count
from models.lip import (
    INPUT_CONVS,
    LipPrior,
    convolutions,
    load_ticket,
    random_like,
    save_ticket,
    trained_count,
)
from models.prior import per_run_input
from tests.conftest import TEST_IMAGE, keep_by_iteration, small_problem
from utils import InputError

ROUNDS = 3
IMP_ARGS = ["--image", TEST_IMAGE[0], "--data_dir", str(TEST_IMAGE[1]), "--crop", "64",
            "--width", "4", "--num_iter", "12", "--show_every", "4", "--gpu", "cpu",
            "--quiet", "--ckpt", "t", "--inits", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def imp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three IMP rounds from the command line with the public code's settings (the clean
    target, the input convolutions dense, a new z every round), and the same with this code's
    earlier options (noisy target, every convolution pruned, one z: CKPT "old"), on a 64x64
    crop, width 4 (about 1 s each)."""
    out = tmp_path_factory.mktemp("imp")
    assert lip.main([*IMP_ARGS, "--rounds", str(ROUNDS), "--out_dir", str(out)]) == 0
    old = ["--imp_target", "noisy", "--prune_input_convs", "--fixed_z", "--ckpt", "old"]
    assert lip.main([*IMP_ARGS, "--rounds", str(ROUNDS), "--out_dir", str(out), *old]) == 0
    return out


def masks(out: Path, ckpt: str = "t") -> list:
    return [load_ticket(mask_path(out, ckpt, "mask", k)) for k in range(ROUNDS + 1)]


def nested(tickets: list) -> bool:
    """A weight once pruned stays pruned."""
    return all((before | ~after).all() for k in range(1, len(tickets)) for before, after in zip(
        tickets[k - 1].mask.values(), tickets[k].mask.values(), strict=True))  # fmt: skip


def test_imp_keeps_the_input_convolutions_dense_as_the_public_code(imp_dir: Path) -> None:
    """Every round chooses round(0.2 · pool) of the unmasked weights, the two convolutions that
    read z included in the pool, and prunes the other layers' share only: those two stay dense
    and each round prunes at most 20% of the pool, at least 20% of it less their weights."""
    tickets = masks(imp_dir)
    total = sum(m.numel() for m in tickets[0].mask.values())
    dense = sum(tickets[0].mask[name].numel() for name in INPUT_CONVS)
    net = SkipPrior((3, 64, 64), width=4).net
    assert set(tickets[0].mask) == set(convolutions(net))  # conv weights only: no bias, no BN
    assert set(INPUT_CONVS) <= set(tickets[0].mask)
    assert nested(tickets)
    for k in range(1, ROUNDS + 1):
        assert all(tickets[k].mask[name].all() for name in INPUT_CONVS), k
        pool = sum(int(m.sum()) for m in tickets[k - 1].mask.values())
        newly = pool - sum(int(m.sum()) for m in tickets[k].mask.values())
        assert round(0.2 * pool) - dense <= newly <= round(0.2 * pool), k
        assert tickets[k].sparsity() < 1 - 0.8**k  # below the nominal sparsity
    provenance = tickets[ROUNDS].meta["provenance"]
    assert provenance["target"] == "clean" and provenance["uses_ground_truth"]
    assert not provenance["prune_input_convs"] and provenance["redraw_z"]
    assert provenance["rounds"] == ROUNDS and provenance["seed"] == 0 and total > dense


def test_the_options_restore_the_exact_0_8_power_over_every_convolution(imp_dir: Path) -> None:
    tickets = masks(imp_dir, "old")
    total = sum(m.numel() for m in tickets[0].mask.values())
    for k, ticket in enumerate(tickets):
        pruned = sum(int((~m).sum()) for m in ticket.mask.values())
        assert abs(pruned - (1 - 0.8**k) * total) <= 1, k
    assert nested(tickets) and not tickets[ROUNDS].mask[INPUT_CONVS[1]].all()
    provenance = tickets[ROUNDS].meta["provenance"]
    assert provenance["target"] == "noisy" and not provenance["uses_ground_truth"]
    assert provenance["prune_input_convs"] and not provenance["redraw_z"]


def test_every_round_draws_a_new_z_from_the_runs_input_stream() -> None:
    """Round k's z is the k-th draw of the run's input stream (round 1's: the skip prior's)."""
    ticket = load_ticket_of(SkipPrior((3, 40, 40), width=4).net)
    first, third = (LipPrior((3, 40, 40), width=4, ticket=ticket, input_draw=d).input
                    for d in (0, 2))  # fmt: skip
    assert torch.equal(first, SkipPrior((3, 40, 40), width=4).input)
    assert torch.equal(third, 0.1 * per_run_input([0], (32, 40, 40), later=2))
    assert not torch.equal(first, third)


def load_ticket_of(net):
    from models.lip import dense_ticket

    return dense_ticket(net)


def test_imp_prunes_by_magnitude_over_all_layers(imp_dir: Path) -> None:
    """Round 1 prunes the globally smallest weights of the trained dense net, the input
    convolutions ranked too: every pruned weight is no larger than every kept one of the other
    layers, and round(0.2 · every weight) lies between the pruned ones plus the input
    convolutions' weights up to the largest pruned and those below the smallest kept (the
    input convolutions' share of the 20% is not pruned). The trained weights are those of round
    1 again (same seed, same loop), so the check retrains it."""
    ticket = load_ticket(mask_path(imp_dir, "t", "mask", 1))
    [search] = lip.parse_searches([*IMP_ARGS, "--out_dir", str(imp_dir)])
    cfg = search.training()
    y, clean, _ = load_targets(cfg, search.images, search.target)
    dense = load_ticket(mask_path(imp_dir, "t", "mask", 0))
    model = build_model(cfg, y.shape[1:], [0], ticket=dense)
    fit(model, y, cfg, progress=False)
    weights = {n: c.weight_orig.detach().abs() for n, c in convolutions(model.prior.net).items()}
    pruned = torch.cat([weights[n][~m] for n, m in ticket.mask.items()])
    kept = torch.cat([weights[n][m] for n, m in ticket.mask.items() if n not in INPUT_CONVS])
    assert pruned.max() <= kept.min()
    least = sum(int((weights[n] <= pruned.max()).sum()) for n in INPUT_CONVS)
    most = sum(int((weights[n] < kept.min()).sum()) for n in INPUT_CONVS)
    total = sum(w.numel() for w in weights.values())
    assert len(pruned) + least <= round(0.2 * total) <= len(pruned) + most and least > 0


def test_surviving_weights_rewind_to_their_initial_values_exactly(imp_dir: Path) -> None:
    ticket = load_ticket(mask_path(imp_dir, "t", "mask", ROUNDS))
    init = SkipPrior((3, 64, 64), width=4, seeds=[0]).net.state_dict()
    cfg = RunConfig(prior="lip", mask=str(mask_path(imp_dir, "t", "mask", ROUNDS)),
                    width=4).resolved()  # fmt: skip
    prior = build_model(cfg, (3, 64, 64), [0, 1]).prior  # two runs: a grouped net
    state = prior.net.state_dict()
    for name, kept in ticket.mask.items():
        both = torch.cat([kept, kept])
        orig = state[name.replace("weight", "weight_orig")]
        assert torch.equal(orig[both], torch.cat([init[name]] * 2)[both])
        assert (orig[~both] == 0).all() and torch.equal(state[name + "_mask"].bool(), both)
        bias = name.replace("weight", "bias")
        assert torch.equal(state[bias], torch.cat([init[bias]] * 2))  # not pruned, rewound


def test_masked_weights_stay_zero_through_training_and_resume(imp_dir: Path) -> None:
    """DOP (g⊙g − h⊙h beside the masked net), Adam, two runs batched: the pruned weights are
    zero after training, in every checkpoint, and after resuming, which continues exactly."""
    path = mask_path(imp_dir, "t", "mask", ROUNDS)
    ticket = load_ticket(path)
    cfg = RunConfig(prior="lip", mask=str(path), width=4, method="dop", num_iter=20,
                    show_every=5, save_every=10).resolved()  # fmt: skip
    y, clean = small_problem(shape=(3, 64, 64))
    saved: dict = {}
    model = build_model(cfg, (3, 64, 64), [0])
    whole = fit(model, y, cfg, clean=clean, checkpoint=keep_by_iteration(saved), progress=False)
    for name, conv in convolutions(model.prior.net).items():
        assert (conv.weight[~ticket.mask[name]] == 0).all()
        assert (conv.weight_orig[~ticket.mask[name]] == 0).all()
        assert (conv.weight[ticket.mask[name]] != 0).any()  # the survivors were trained
    state = saved[10]
    for name, kept in ticket.mask.items():
        assert (state["model"][f"prior.net.{name}_orig"][~kept] == 0).all()
    resumed_model = build_model(cfg, (3, 64, 64), [0])
    resumed = fit(resumed_model, y, cfg, clean=clean, state=state, progress=False)
    assert resumed.history == whole.history
    for name, conv in convolutions(resumed_model.prior.net).items():
        assert (conv.weight_orig[~ticket.mask[name]] == 0).all()


def test_cli_trains_a_mask_and_resumes_after_a_kill(imp_dir: Path, tmp_path: Path) -> None:
    """--prior lip --mask from the command line: stopped at iteration 10 (its last checkpoint),
    resumed to 20; the saved state keeps the pruned weights at zero and the mask's sha256."""
    path = mask_path(imp_dir, "t", "mask", ROUNDS)
    args = [*IMP_ARGS[:8], "--prior", "lip", "--mask", str(path), "--gpu", "cpu", "--quiet",
            "--show_every", "5", "--save_every", "10", "--out_dir", str(tmp_path)]  # fmt: skip
    assert denoising.main([*args, "--num_iter", "10"]) == 0
    assert denoising.main([*args, "--num_iter", "20", "--resume"]) == 0
    state = torch.load(tmp_path / "test_state.pt", weights_only=False)
    assert state["iteration"] == 20 and len(state["data"]["mask_sha256"]) == 64
    for name, kept in load_ticket(path).mask.items():
        assert (state["model"][f"prior.net.{name}_orig"][~kept] == 0).all()


def test_mask_file_round_trips_and_a_misfit_is_refused(imp_dir: Path, tmp_path: Path,
                                                       capsys) -> None:  # fmt: skip
    ticket = load_ticket(mask_path(imp_dir, "t", "mask", 2))
    save_ticket(tmp_path / "copy.pt", ticket)
    copy = load_ticket(tmp_path / "copy.pt")
    assert copy.mask.keys() == ticket.mask.keys() and copy.meta == ticket.meta
    assert all(torch.equal(copy.mask[n], ticket.mask[n]) for n in ticket.mask)
    assert all(torch.equal(copy.rewind[n], ticket.rewind[n]) for n in ticket.rewind)
    pruned = sum(int((~m).sum()) for m in ticket.mask.values())
    assert copy.sparsity() == pytest.approx(pruned / sum(m.numel() for m in ticket.mask.values()))
    assert 0.1 < copy.sparsity() < 1 - 0.8**2  # the dense input convolutions: below 36%
    with pytest.raises(InputError, match="does not fit the skip net of width 8"):
        build_model(RunConfig(prior="lip", mask=str(tmp_path / "copy.pt"), width=8).resolved(),
                    (3, 64, 64), [0])  # fmt: skip
    args = [*IMP_ARGS[:6], "--width", "8", "--prior", "lip", "--mask", str(tmp_path / "copy.pt"),
            "--gpu", "cpu", "--out_dir", str(tmp_path)]  # fmt: skip
    assert denoising.main(args) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "mask" in err
        and "body.deeper.0.weight of shape (4, 32, 3, 3), the net (8, 32, 3, 3)" in err
    )
    (tmp_path / "junk.pt").write_bytes(b"not a mask")
    with pytest.raises(InputError, match="cannot read"):
        load_ticket(tmp_path / "junk.pt")


def test_random_twin_has_the_lip_mask_sparsity_in_every_layer(imp_dir: Path) -> None:
    for k in range(1, ROUNDS + 1):
        found = load_ticket(mask_path(imp_dir, "t", "mask", k))
        twin = load_ticket(mask_path(imp_dir, "t", "random", k))
        assert twin.meta["kind"] == "random"
        for name, kept in found.mask.items():
            assert int(kept.sum()) == int(twin.mask[name].sum()), name
        assert any(not torch.equal(kept, twin.mask[n]) for n, kept in found.mask.items())
        assert all(torch.equal(twin.rewind[n], found.rewind[n]) for n in found.rewind)
    again = random_like(found, seed=7)
    assert all(torch.equal(again.mask[n], random_like(found, seed=7).mask[n]) for n in again.mask)


def test_evaluate_pairs_each_round_with_a_deep_decoder_of_as_many_parameters(
    imp_dir: Path, tmp_path: Path, capsys
) -> None:
    """lip.py evaluate: the dense net, LIP masks, random twins and, per round, the deep decoder
    whose 6k² + 12k + 3k parameters are closest to the LIP net's trained count (the runs report
    both counts, from the modules); a task passed through gets runs of its own; finished runs are
    reused, and a run made with other settings is refused in one line."""
    runs, csv_path = tmp_path / "runs", tmp_path / "eval.csv"
    args = ["evaluate", "--masks", str(imp_dir / "t"), "--rounds", str(ROUNDS),
            "--only_rounds", str(ROUNDS), "--images", TEST_IMAGE[0], "--runs", str(runs),
            "--csv", str(csv_path), "--figure", str(tmp_path / "eval.png"), "--inits", "1",
            *IMP_ARGS[2:12]]  # fmt: skip
    assert lip.main(args) == 0
    rows = list(csv.DictReader(csv_path.open()))
    assert {(r["kind"], r["round"]) for r in rows} == {("dense", "0")} | {
        (kind, str(ROUNDS)) for kind in ("lip", "random", "decoder")}  # fmt: skip
    dense = SkipPrior((3, 64, 64), width=4).count_trained()
    ticket = load_ticket(mask_path(imp_dir, "t", "mask", ROUNDS))
    lip_row, decoder = (next(r for r in rows if r["kind"] == kind) for kind in ("lip", "decoder"))
    pruned = sum(int((~m).sum()) for m in ticket.mask.values())
    assert int(lip_row["trained_parameters"]) == trained_count(ticket) == dense - pruned
    width, count = int(decoder["width"]), int(lip_row["trained_parameters"])
    assert int(decoder["trained_parameters"]) == parameter_count(width)
    gap = abs(parameter_count(width) - count)
    assert gap == min(abs(parameter_count(j) - count) for j in range(1, 100))
    assert decoder["sparsity"] == lip_row["sparsity"] and decoder["task"] == "denoise"
    for row in rows:  # the paper's number: the moving average's best over every iteration
        assert float(row["oracle_ema_peak_psnr"]) > 0
        assert 0 <= int(row["oracle_ema_peak_iteration"]) < 12
    assert (tmp_path / "eval.png").stat().st_size > 0
    configs = {p: p.stat().st_mtime_ns for p in runs.glob("*_config.json")}
    assert lip.main(args) == 0  # everything reused
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*_config.json")} == configs
    sr = [*args, "--task", "sr", "--factor", "4"]
    assert lip.main(sr) == 0
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 4 and {r["task"] for r in rows} == {"sr"}
    assert all(r["ckpt"].endswith("_sr") for r in rows)
    assert len(list(runs.glob("*_config.json"))) == 8
    capsys.readouterr()
    assert lip.main([*args, "--nlevel", "0.3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "nlevel=0.5, not 0.3" in err
