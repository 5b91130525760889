"""Robust PCA by double over-parameterization (DOP) with discrepant learning rates.

Reproduces the low-rank experiment of
    C. You, Z. Zhu, Q. Qu, Y. Ma, "Robust Recovery via Implicit Bias of Discrepant Learning
    Rates for Double Over-parameterization", NeurIPS 2020 (arXiv:2006.08857).

Problem. X* = V V^T in R^{n x n} is PSD of rank r, s* is sparse, and we observe y = X* + s*.
DOP fits
    min_{U, g, h}  1/2 || U U^T + g*g - h*h - y ||_F^2,      U in R^{n x n},  g, h in R^{n x n}
by plain gradient descent from a small initialisation (U_0 = eps I, g_0 = h_0 = eps 1), with
step tau for U and alpha * tau for (g, h). The paper shows that, as eps -> 0, gradient flow
converges to the solution of the convex program
    min_{X >= 0, s}  ||X||_* + (1/alpha) ||s||_1   s.t.   y = X + s,                 (PCP)
i.e. principal component pursuit (Candes, Li, Ma, Wright, "Robust principal component
analysis?", J. ACM 2011) with lambda = 1/alpha (the PSD constraint comes from X = U U^T), so
alpha = sqrt(n) recovers X* without knowing r. (Measured here with plain gradient descent at
eps = 1e-8: DOP matches PCP to ~1e-4 at alpha = sqrt(n) but not far from it -- at
alpha = sqrt(n)/2 PCP is exact and DOP is 0.4 off; see docs/lowrank.md.) The classical
alternative
    min_{U in R^{n x r'}}  || y - U U^T ||_1
needs r' = r: with r' = n its minimisers fit part of the corruption.

What this script does (see `main`): draws a seeded instance, runs DOP at a sweep of alpha
(all alphas in one batched tensor), solves PCP at lambda = 1/alpha by ADMM as the reference,
runs the l1 factorisation with r' = r and r' = n, prints a table, writes JSON + CSV results
and figures. Everything is float64 by default; the corruption is symmetric (see
`make_instance`).

    python lowrank.py                        # default: n=50, r=3, p=0.1, seed 0
    python lowrank.py --phase_map            # also a success map over (rank, p) at alpha=sqrt(n)
"""

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from utils import ArgumentParser, InputError, guarded, memory
from utils.io import check_writable


# --------------------------------------------------------------------------- problem instance
@dataclass
class Instance:
    x_star: torch.Tensor  # (n, n) PSD, rank r
    s_star: torch.Tensor  # (n, n) symmetric sparse corruption
    y: torch.Tensor  # (n, n) observation x_star + s_star


def make_instance(
    n: int,
    rank: int,
    p: float,
    seed: int,
    corruption_scale: float = 3.0,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
) -> Instance:
    """Draw y = X* + s* with X* = V V^T, V_ij ~ N(0, 1), V in R^{n x r}.

    s* is symmetric: exactly round(p * n(n+1)/2) entries of the upper triangle (diagonal
    included) are drawn without replacement, set to Uniform(-c m, c m) with
    m = max_ij |X*_ij| and c = corruption_scale, and mirrored to the lower triangle. We keep s*
    symmetric because U U^T is symmetric: an antisymmetric part of s* could only be absorbed
    by g*g - h*h and would change the problem the theory is about. Sampling is done on the CPU
    with a seeded generator so an instance is the same on every device.
    """
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n, rank, generator=gen, dtype=dtype)
    x_star = v @ v.T
    rows, cols = torch.triu_indices(n, n)
    num_upper = rows.numel()
    num_corrupt = round(p * num_upper)
    pick = torch.randperm(num_upper, generator=gen)[:num_corrupt]
    bound = corruption_scale * x_star.abs().max()
    values = (2 * torch.rand(num_corrupt, generator=gen, dtype=dtype) - 1) * bound
    upper = torch.zeros(n, n, dtype=dtype)
    upper[rows[pick], cols[pick]] = values
    s_star = upper + upper.T - torch.diag(torch.diagonal(upper))
    return Instance(x_star.to(device), s_star.to(device), (x_star + s_star).to(device))


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref||_F / ||ref||_F; nan when ref = 0 or x is not finite."""
    ref_norm = torch.linalg.norm(ref)
    if ref_norm == 0 or not torch.isfinite(x).all():
        return math.nan
    return (torch.linalg.norm(x - ref) / ref_norm).item()


# --------------------------------------------------------------------------- DOP
@dataclass
class DopResult:
    x: torch.Tensor  # (A, n, n) low-rank part U U^T per alpha
    s: torch.Tensor  # (A, n, n) sparse part g*g - h*h per alpha
    tau: torch.Tensor  # (A,) step size of U per alpha (g, h use alpha * tau)
    history_steps: list[int]
    history_error: list[list[float]]  # per logged step, ||X_t - X*||_F / ||X*||_F per alpha


def run_dop(
    y: torch.Tensor,
    alphas: torch.Tensor,
    steps: int,
    init_scale: float = 1e-8,
    lr: float = 0.2,
    log_every: int = 100,
    x_star: torch.Tensor | None = None,
) -> DopResult:
    """Gradient descent on f(U, g, h) = 1/2 ||U U^T + g*g - h*h - y||_F^2 (You et al. 2020).

    With R = U U^T + g*g - h*h - y the gradients are
        grad_U f = (R + R^T) U,   grad_g f = 2 R * g,   grad_h f = -2 R * h,
    and one step is U -= tau grad_U, (g, h) -= alpha tau grad_(g,h), from U_0 = eps I,
    g_0 = h_0 = eps 1 (eps = init_scale; small eps is what makes the implicit bias nuclear
    norm + (1/alpha) l1). All alphas run at once as a batch; y may be (n, n) or (A, n, n).

    Step rule: tau = lr / max(||y||_2, alpha max|y_ij|). Near a fit the curvature is about
    2||X||_2 ~ 2||y||_2 in U and 4|s_ij| <= 4 max|y_ij| in g, h, so one lr keeps both blocks
    stable across the sweep while the ratio of the two learning rates stays exactly alpha
    (the gradient-flow limit depends on that ratio only; with finite steps the result for
    alpha << sqrt(n) still moves with lr, measured in docs/lowrank.md). lr = 0.25 already
    diverged once at alpha ~ sqrt(n)/11 on seed 0, lr = 0.2 on none of seeds 0-3. A diverged
    alpha turns into inf/nan in its own batch slice only; callers report it as "diverged".
    """
    num = alphas.numel()
    y = y.expand(num, *y.shape[-2:])
    n = y.shape[-1]
    alpha = alphas.to(y).view(num, 1, 1)
    spectral = torch.linalg.matrix_norm(y, ord=2).view(num, 1, 1)
    largest = y.abs().amax(dim=(1, 2)).view(num, 1, 1)
    tau = lr / torch.maximum(spectral, alpha * largest)

    u = init_scale * torch.eye(n, dtype=y.dtype, device=y.device).expand(num, n, n).clone()
    g = torch.full_like(y, init_scale)
    h = torch.full_like(y, init_scale)
    history_steps, history_error = [], []

    def log(step: int) -> None:
        x = u @ u.transpose(1, 2)
        err = torch.linalg.norm(x - x_star, dim=(1, 2)) / torch.linalg.norm(x_star)
        history_steps.append(step)
        history_error.append(err.tolist())

    if x_star is not None:
        log(0)  # curves start at ||eps^2 I - X*|| / ||X*|| ~ 1
    for step in range(1, steps + 1):
        residual = u @ u.transpose(1, 2) + g * g - h * h - y
        grad_u = (residual + residual.transpose(1, 2)) @ u
        u = u - tau * grad_u
        g = g - alpha * tau * 2 * residual * g
        h = h + alpha * tau * 2 * residual * h
        if x_star is not None and (step % log_every == 0 or step == steps):
            log(step)
    return DopResult(
        u @ u.transpose(1, 2), g * g - h * h, tau.view(num), history_steps, history_error
    )


# --------------------------------------------------------------------------- convex reference
@dataclass
class PcpResult:
    x: torch.Tensor
    s: torch.Tensor
    iterations: int
    converged: bool


def solve_pcp(
    y: torch.Tensor, lam: float, psd: bool = True, max_iters: int = 10000, tol: float = 1e-9
) -> PcpResult:
    """Principal component pursuit min ||X||_* + lam ||s||_1 s.t. X + s = y, by ADMM.

    Candes, Li, Ma, Wright (J. ACM 2011). With psd=True the constraint X >= 0 is added, which is
    exactly the program DOP's limit solves (X = U U^T); psd=False is the classical PCP. y is
    symmetric here, so the X-step is an eigenvalue soft-threshold (shifted and clipped at 0 when
    psd). Iterations (scaled dual Y, penalty mu):
        s <- shrink(y - X + Y/mu, lam/mu),  X <- prox_{||.||_*/mu}(y - s + Y/mu),
        Y <- Y + mu (y - X - s),
    stopping when primal and dual residuals are both below tol ||y||_F. mu starts at
    n^2 / (4 ||y||_1) (Candes et al.) and is rebalanced x2 / /2 (Boyd et al. 2011, 3.4.1). We do
    not use the inexact ALM with mu -> infinity: it stalls at feasible but suboptimal points.
    """
    mu = y.numel() / (4 * y.abs().sum().item())
    x = torch.zeros_like(y)
    s = torch.zeros_like(y)
    dual = torch.zeros_like(y)
    y_norm = torch.linalg.norm(y).item()
    for iteration in range(1, max_iters + 1):
        target = y - x + dual / mu
        s = torch.sign(target) * (target.abs() - lam / mu).clamp(min=0)
        target = y - s + dual / mu
        eigvals, eigvecs = torch.linalg.eigh((target + target.T) / 2)
        if psd:
            eigvals = (eigvals - 1 / mu).clamp(min=0)
        else:
            eigvals = torch.sign(eigvals) * (eigvals.abs() - 1 / mu).clamp(min=0)
        x_new = (eigvecs * eigvals) @ eigvecs.T
        dual_res = mu * torch.linalg.norm(x_new - x).item()
        x = x_new
        gap = y - x - s
        dual = dual + mu * gap
        primal_res = torch.linalg.norm(gap).item()
        if primal_res < tol * y_norm and dual_res < tol * y_norm:
            return PcpResult(x, s, iteration, True)
        if primal_res > 10 * dual_res:
            mu *= 2
        elif dual_res > 10 * primal_res:
            mu /= 2
    return PcpResult(x, s, max_iters, False)


# --------------------------------------------------------------------------- l1 factorisation
def l1_factorization(
    y: torch.Tensor,
    rank: int,
    steps: int,
    schedule: str,
    init_scale: float = 1e-8,
    seed: int = 0,
) -> torch.Tensor:
    """Subgradient method on min_{U in R^{n x r'}} ||y - U U^T||_1, r' = rank; returns U U^T.

    Subgradient: with R = y - U U^T, G = -(sign(R) + sign(R)^T) U. U_0 = eps G_0 / sqrt(r'),
    G_0 Gaussian (seeded). Two decaying steps (both scaled by 1/n because ||sign(R)||_2 <= n):
      "geometric": eta_k = (0.05 / n) 0.999^k, the schedule of Li, Zhu, So, Vidal (SIAM J. Optim.
                   2020) for sharp robust recovery; its sum is finite, so it also stops early.
      "sqrt":      eta_k = (0.5 / n) / sqrt(k + 1), non-summable, so it keeps decreasing the loss
                   towards a minimiser of the l1 objective.
    With r' = n the two behave very differently (measured, see docs/lowrank.md): the minimiser
    that "sqrt" approaches fits part of s* (lower l1 loss than X* itself), while "geometric" from
    a tiny init stalls near X*, the implicit regularisation of Ma & Fattahi (arXiv:2102.02969).
    """
    n = y.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    u = init_scale * torch.randn(n, rank, generator=gen, dtype=y.dtype).to(y.device)
    u = u / math.sqrt(rank)
    for k in range(steps):
        sign = torch.sign(y - u @ u.T)
        grad = -(sign + sign.T) @ u
        if schedule == "geometric":
            eta = 0.05 / n * 0.999**k
        elif schedule == "sqrt":
            eta = 0.5 / n / math.sqrt(k + 1)
        else:
            raise ValueError(f"unknown schedule {schedule!r}")
        u = u - eta * grad
    return u @ u.T


# --------------------------------------------------------------------------- experiment
def default_alphas(n: int) -> list[float]:
    """sqrt(n) 2^k for k = -5, -4.5, ..., 2: includes sqrt(n)/4 ... 4 sqrt(n) and, for n <= 1024,
    values <= 1 (sqrt(n)/32 <= 1)."""
    return [math.sqrt(n) * 2 ** (k / 2) for k in range(-10, 5)]


def fmt(value: float | None) -> str:
    """Number for the printed table; non-finite values are reported as diverged."""
    if value is None:
        return "n/a"
    if not math.isfinite(value):
        return "diverged"
    return f"{value:.2e}"


def run_sweep(args: argparse.Namespace, device: str, dtype: torch.dtype) -> dict:
    """DOP over the alpha sweep, PCP at lambda = 1/alpha, l1 factorisation; returns all numbers."""
    inst = make_instance(args.n, args.rank, args.p, args.seed, args.corruption_scale, dtype, device)
    alphas = torch.tensor(args.alphas, dtype=dtype, device=device)

    start = time.perf_counter()
    dop = run_dop(inst.y, alphas, args.steps, args.init, args.lr, args.log_every, inst.x_star)
    dop_seconds = time.perf_counter() - start

    start = time.perf_counter()
    rows = []
    for i, alpha in enumerate(args.alphas):
        pcp = solve_pcp(inst.y, 1 / alpha, psd=True)
        pcp_plain = solve_pcp(inst.y, 1 / alpha, psd=False)
        x_dop = dop.x[i]
        # relative to ||X_pcp|| is meaningless once PCP has thrown X away (large alpha)
        pcp_nonzero = torch.linalg.norm(pcp.x) > 1e-2 * torch.linalg.norm(inst.x_star)
        rows.append(
            {
                "alpha": alpha,
                "alpha_over_sqrt_n": alpha / math.sqrt(args.n),
                "dop_error": relative_error(x_dop, inst.x_star),
                "pcp_error": relative_error(pcp.x, inst.x_star),
                "pcp_plain_error": relative_error(pcp_plain.x, inst.x_star),
                "dop_to_pcp": relative_error(x_dop, pcp.x) if pcp_nonzero else None,
                "dop_to_y": relative_error(x_dop, inst.y),
                "dop_residual": relative_error(x_dop + dop.s[i], inst.y),
                "pcp_converged": pcp.converged and pcp_plain.converged,
                "pcp_iterations": pcp.iterations,
            }
        )
    pcp_seconds = time.perf_counter() - start

    start = time.perf_counter()
    l1_rows = []
    for schedule in ("geometric", "sqrt"):
        for width in (args.rank, args.n):
            x = l1_factorization(inst.y, width, args.l1_steps, schedule, args.init, args.seed)
            l1_rows.append(
                {
                    "rank": width,
                    "schedule": schedule,
                    "error": relative_error(x, inst.x_star),
                    "l1_loss": (inst.y - x).abs().sum().item(),
                }
            )
    l1_seconds = time.perf_counter() - start

    return {
        "config": {k: v for k, v in vars(args).items() if k not in ("out_dir", "results")},
        "device": device,
        "torch": torch.__version__,
        "l1_loss_at_x_star": inst.s_star.abs().sum().item(),
        "y_distance": relative_error(inst.y, inst.x_star),
        "sweep": rows,
        "l1": l1_rows,
        "dop_tau": dop.tau.tolist(),
        "history_steps": dop.history_steps,
        "history_error": dop.history_error,
        "seconds": {"dop": dop_seconds, "pcp": pcp_seconds, "l1": l1_seconds},
    }


def run_phase_map(args: argparse.Namespace, device: str, dtype: torch.dtype) -> dict:
    """DOP at alpha = sqrt(n) and PSD-PCP at lambda = 1/sqrt(n) over a (rank, p) grid.

    All grid cells run as one DOP batch (one y per cell)."""
    ranks = [r for r in (1, 2, 3, 5, 8, 12) if r <= args.n]
    fractions = [0.05, 0.1, 0.2, 0.3, 0.4]
    cells = [(r, p) for r in ranks for p in fractions]
    instances = [
        make_instance(args.n, r, p, args.seed, args.corruption_scale, dtype, device)
        for r, p in cells
    ]
    ys = torch.stack([inst.y for inst in instances])
    alphas = torch.full((len(cells),), math.sqrt(args.n), dtype=dtype, device=device)
    dop = run_dop(ys, alphas, args.steps, args.init, args.lr, log_every=args.steps)
    dop_error = [relative_error(dop.x[i], inst.x_star) for i, inst in enumerate(instances)]
    pcp_error = [
        relative_error(solve_pcp(inst.y, 1 / math.sqrt(args.n)).x, inst.x_star)
        for inst in instances
    ]
    return {"ranks": ranks, "fractions": fractions, "dop_error": dop_error, "pcp_error": pcp_error}


# --------------------------------------------------------------------------- output
def print_table(results: dict) -> None:
    n = results["config"]["n"]
    print(f"relative errors ||X - X*||_F / ||X*||_F   (n={n}, sqrt(n)={math.sqrt(n):.3f})")
    print(f"  corrupted input y itself: {fmt(results['y_distance'])}")
    header = (
        f"{'alpha':>8} {'a/sqrt(n)':>9} {'DOP':>9} {'PCP(psd)':>9} {'PCP':>9} "
        f"{'DOP-PCP':>9} {'DOP-y':>9} {'residual':>9}"
    )
    print(header)
    for row in results["sweep"]:
        print(
            f"{row['alpha']:8.3f} {row['alpha_over_sqrt_n']:9.3f} {fmt(row['dop_error']):>9} "
            f"{fmt(row['pcp_error']):>9}{' ' if row['pcp_converged'] else '*'}"
            f"{fmt(row['pcp_plain_error']):>9} "
            f"{fmt(row['dop_to_pcp']):>9} {fmt(row['dop_to_y']):>9} {fmt(row['dop_residual']):>9}"
        )
    print("  PCP(psd) solves the program DOP's limit solves, at lambda = 1/alpha; DOP-PCP and")
    print("  DOP-y are ||X_dop - Z||_F / ||Z||_F (n/a: ||X_pcp|| < 1e-2 ||X*||); residual is")
    print("  ||X + s - y||_F / ||y||_F of DOP; * = ADMM stopped at max_iters before tol.")
    print(f"l1 factorisation (||y - X*||_1 = {results['l1_loss_at_x_star']:.1f})")
    for row in results["l1"]:
        print(
            f"  r'={row['rank']:<4} step={row['schedule']:<9} error={fmt(row['error']):>9}"
            f"  l1 loss={row['l1_loss']:.1f}"
        )


def finite_or_none(value: object) -> object:
    """Recursively replace inf/nan (a diverged run) by None so the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_results(results: dict, path: Path) -> None:
    """JSON with everything at `path` (null = diverged / undefined), and the per-alpha + l1
    table as CSV next to it (same stem, suffix .csv; empty cell = not applicable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite_or_none(results), indent=1, allow_nan=False))
    with path.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "alpha", "rank", "relative_error", "distance_to_pcp"])
        for row in results["sweep"]:
            writer.writerow(["dop", row["alpha"], "", row["dop_error"], row["dop_to_pcp"]])
            writer.writerow(["pcp_psd", row["alpha"], "", row["pcp_error"], ""])
            writer.writerow(["pcp", row["alpha"], "", row["pcp_plain_error"], ""])
        for row in results["l1"]:
            method = f"l1_{row['schedule']}"
            writer.writerow([method, "", row["rank"], row["error"], ""])


def plot_figures(results: dict, out_dir: Path, phase: dict | None) -> list[Path]:
    """lowrank_error_vs_alpha.png, lowrank_error_vs_iteration.png (+ lowrank_phase_map.png)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: figures go to files only
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    n = results["config"]["n"]
    floor = 1e-12  # exact recoveries (PCP ~1e-9) still need a point on a log axis
    alphas = [row["alpha"] for row in results["sweep"]]

    def clean(values: list) -> list[float]:
        return [max(v, floor) if v is not None and math.isfinite(v) else math.nan for v in values]

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(alphas, clean([r["dop_error"] for r in results["sweep"]]), "o-", label="DOP")
    pcp_label = r"PCP ($X\succeq 0$), $\lambda=1/\alpha$"
    ax.plot(alphas, clean([r["pcp_error"] for r in results["sweep"]]), "s--", label=pcp_label)
    pcp_plain = clean([r["pcp_plain_error"] for r in results["sweep"]])
    ax.plot(alphas, pcp_plain, "^:", label=r"PCP, $\lambda=1/\alpha$")
    styles = {("geometric", False): "C3", ("geometric", True): "C4", ("sqrt", False): "C5"}
    for row in results["l1"]:
        full = row["rank"] == n
        color = styles.get((row["schedule"], full), "C6")
        width = "n" if full else "r"
        ax.axhline(
            max(row["error"], floor) if math.isfinite(row["error"]) else 1.0,
            color=color,
            ls="-." if row["schedule"] == "sqrt" else "--",
            lw=1,
            label=f"$\\ell_1$, $r'={width}$, {row['schedule']} step",
        )
    ax.axvline(math.sqrt(n), color="k", lw=0.8)
    ax.text(math.sqrt(n), 0.98, r" $\sqrt{n}$", transform=ax.get_xaxis_transform(), va="top")
    ax.set(xscale="log", yscale="log", xlabel=r"$\alpha$ (PCP: $\lambda = 1/\alpha$)")
    ax.set_ylabel(r"$\|X - X^*\|_F / \|X^*\|_F$")
    ax.set_title(f"n={n}, r={results['config']['rank']}, p={results['config']['p']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [out_dir / "lowrank_error_vs_alpha.png"]
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    # A few alphas: the ones closest (in log scale) to sqrt(n) times these factors.
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    steps = results["history_steps"]
    chosen = []
    for factor in (1 / 8, 1 / 2, 1, 2, 4):
        target = math.log(math.sqrt(n) * factor)
        i = min(range(len(alphas)), key=lambda j: abs(math.log(alphas[j]) - target))
        if i not in chosen:
            chosen.append(i)
    for i in chosen:
        curve = clean([errors[i] for errors in results["history_error"]])
        ax.plot(
            steps,
            curve,
            label=rf"$\alpha$={alphas[i]:.2f} ({alphas[i] / math.sqrt(n):.3g}$\sqrt{{n}}$)",
        )
    ax.set(yscale="log", xlabel="iteration", ylabel=r"$\|X_t - X^*\|_F / \|X^*\|_F$")
    ax.set_title("DOP, gradient descent")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "lowrank_error_vs_iteration.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    if phase is not None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
        shape = (len(phase["ranks"]), len(phase["fractions"]))
        for ax, key, title in zip(
            axes, ("dop_error", "pcp_error"), ("DOP", "PCP (psd)"), strict=True
        ):
            grid = torch.tensor(clean(phase[key])).view(shape).clamp(max=10).log10()
            image = ax.imshow(grid.numpy(), origin="lower", cmap="viridis", vmin=-6, vmax=1)
            for (i, j), value in zip(
                [(i, j) for i in range(shape[0]) for j in range(shape[1])],
                clean(phase[key]),
                strict=True,
            ):
                label = f"{value:.0e}" if math.isfinite(value) else "div."
                ax.text(j, i, label, ha="center", va="center", fontsize=6, color="w")
            ax.set_xticks(range(shape[1]), [str(p) for p in phase["fractions"]])
            ax.set_yticks(range(shape[0]), [str(r) for r in phase["ranks"]])
            ax.set(xlabel="corruption fraction p", title=rf"{title}, $\alpha=\sqrt{{n}}$")
        axes[0].set_ylabel("rank r")
        fig.colorbar(image, ax=axes, label="log10 relative error")
        paths.append(out_dir / "lowrank_phase_map.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


# --------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Robust PCA by double over-parameterization (You et al., NeurIPS 2020): "
        "DOP vs principal component pursuit vs l1 factorisation.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=50, help="matrix size n (X* is n x n)")
    parser.add_argument("--rank", type=int, default=3, help="rank r of X* = V V^T")
    parser.add_argument(
        "--p", type=float, default=0.1, help="fraction of (symmetric) entries corrupted"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the problem instance")
    parser.add_argument(
        "--alphas",
        type=float,
        nargs="+",
        default=None,
        help="learning-rate ratios alpha to sweep (default: sqrt(n) * 2^(k/2), k=-10..4)",
    )
    parser.add_argument("--steps", type=int, default=30000, help="DOP gradient steps")
    parser.add_argument(
        "--init", type=float, default=1e-8, help="DOP/l1 init scale eps: U0=eps I, g0=h0=eps"
    )
    parser.add_argument(
        "--lr", type=float, default=0.2, help="tau = lr / max(||y||_2, alpha max|y_ij|)"
    )
    parser.add_argument("--l1_steps", type=int, default=30000, help="l1 subgradient steps")
    parser.add_argument(
        "--corruption_scale", type=float, default=3.0, help="s* ~ U(-c m, c m), m = max|X*_ij|"
    )
    parser.add_argument("--log_every", type=int, default=100, help="DOP error-log interval")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if present"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads for this run (0: leave torch's default); the matrices are small, "
        "so 1 is as fast and avoids spin-waiting on a busy machine",
    )
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="dtype")
    parser.add_argument("--out_dir", type=Path, default=Path("figs"), help="figure directory")
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("checkpoints/lowrank_results.json"),
        help="JSON results path; a CSV table is written next to it with suffix .csv",
    )
    parser.add_argument(
        "--phase_map",
        action="store_true",
        help="also run DOP and PCP at alpha=sqrt(n) over a (rank, p) grid (lowrank_phase_map.png)",
    )
    args = parser.parse_args(argv)

    if args.n < 2:
        raise InputError(f"--n must be >= 2, got {args.n}")
    if not 1 <= args.rank <= args.n:
        raise InputError(f"--rank must be in [1, n={args.n}], got {args.rank}")
    if not 0 <= args.p <= 1:
        raise InputError(f"--p must be in [0, 1], got {args.p}")
    if args.alphas is None:
        args.alphas = default_alphas(args.n)
    if any(not (a > 0 and math.isfinite(a)) for a in args.alphas):
        raise InputError(f"--alphas must be positive and finite, got {args.alphas}")
    if args.threads < 0:
        raise InputError(f"--threads must be >= 0, got {args.threads}")
    for name in ("steps", "l1_steps", "log_every"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("init", "lr", "corruption_scale"):
        if not getattr(args, name) > 0:
            raise InputError(f"--{name} must be > 0, got {getattr(args, name)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda requested but CUDA is not available")
    return args


def main(argv: list[str] | None = None) -> int:
    return guarded(lambda: sweep(parse_args(argv)))


def sweep(args: argparse.Namespace) -> int:
    """The sweep (and the phase map), its table, results and figures."""
    check_writable(args.out_dir, "--out_dir", folder=True)
    for path in (args.results, args.results.with_suffix(".csv")):
        check_writable(path, "--results")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)

    previous_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:  # restore the thread count: tests call main() inside a longer-lived process
        results = run_sweep(args, device, dtype)
        phase = run_phase_map(args, device, dtype) if args.phase_map else None
    except RuntimeError as err:  # a --n too large for the memory: one line, as the runner's
        if not memory.is_out_of_memory(err):
            raise
        print(f"error: out of memory ({memory.describe_failure(err)}); use a smaller --n, fewer "
              "--alphas, or --dtype float32", file=sys.stderr)  # fmt: skip
        return 3
    finally:
        torch.set_num_threads(previous_threads)
    if phase is not None:
        results["phase_map"] = phase
    print_table(results)
    write_results(results, args.results)
    figures = plot_figures(results, args.out_dir, phase)
    seconds = results["seconds"]
    print(
        f"time: DOP {seconds['dop']:.1f}s, PCP {seconds['pcp']:.1f}s, l1 {seconds['l1']:.1f}s "
        f"on {device}"
    )
    print(
        f"wrote {args.results}, {args.results.with_suffix('.csv')}, " + ", ".join(map(str, figures))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
