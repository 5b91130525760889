"""The experiment sets of the paper's figures, as data: which runs each figure needs.

A run is one ``RunConfig``. Each figure is a list of cases (image, noise type and level) and the
variants run on each (DOP, DIP with the L2 loss, DIP-L1, ...: ``VARIANTS``, RunConfig settings);
the figures share runs (F16 at 50% is in Figures 3, 4 and 5), and a run's name depends only on
its settings, so a shared run is run once. A profile (full or quick) fixes the crop, the width
scale, the iteration count and DOP's lr_c rule (``Profile.config``: the one place a variant
becomes a run's settings): the same figure at two profiles gives two disjoint sets of runs, kept
in two output folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.config import RunConfig
from experiments.imp import Search, mask_path
from models.lip import PRUNE_FRACTION
from utils import InputError, images

FULL_ITERS = 150_000  # the public code's default
README_ITERS = 200_000  # the public README curve runs to 200k iterations
PAPER_IMAGES = tuple(images.PAPER_IMAGES)  # F16, Peppers, Baboon, kodim03
LEVELS = (0.1, 0.3, 0.5, 0.7)
ES_ITERS = 5000  # the early-stopping paper's DIP runs (ES_WMV.ipynb, ES_EMV.ipynb: num_iter)
# The compared variants as RunConfig settings: DOP, the two pure Deep Image Prior baselines of
# DOP's paper (its public code's SGD, lr 1), the early-stopping paper's DIP (Adam 0.01, its
# notebooks' ``get_params('net')`` and ``lr``), and the other priors (each with its own reference
# optimizer and width, models/).
VARIANTS = {
    "dop": {"method": "dop", "loss": "l2"},
    "dip": {"method": "dip", "loss": "l2"},
    "dip-l1": {"method": "dip", "loss": "l1"},
    "dip-es": {"method": "dip", "loss": "l2", "alg": "adam", "lr": 0.01},
    "decoder": {"method": "dip", "prior": "decoder"},
    "decoder-dop": {"method": "dop", "prior": "decoder"},
    "drp": {"method": "dip", "prior": "drp"},
    "lip": {"method": "dip", "prior": "lip"},  # --mask: the set's mask search (LIP_MASKS)
}


def needs_mask(variant: str) -> bool:
    """Whether the variant trains the lottery prior, on the mask of its set's mask search."""
    return VARIANTS[variant].get("prior") == "lip"


PAPER_VARIANTS = ("dop", "dip", "dip-l1")  # what the paper's figures compare
# The comparison table (docs/COMPARISON.md): every variant with both stopping rules watching, on
# the early-stopping paper's levels (REFERENCE.md §3).
COMPARE_VARIANTS = tuple(VARIANTS)
COMPARE_NOISES = (("salt_pepper", 0.3), ("salt_pepper", 0.5), ("salt_pepper", 0.7),
                  ("gaussian", 0.12), ("gaussian", 0.18), ("gaussian", 0.26))  # fmt: skip
# SV-ES's own measured set (docs/COMPARISON.md): its autoencoder costs a hundred DIP iterations
# per check at the quick profile on a CPU (docs/RESULTS.md, "Self-validation early stopping"),
# too much to watch every comparison run, so it watches DIP and DIP-L1 (its paper's DIP runs, MSE
# and L1) on one Gaussian and one impulse case, with the two light rules beside it.
SV_VARIANTS = ("dip", "dip-l1")
SV_NOISES = (("gaussian", 0.18), ("salt_pepper", 0.5))
# The lr_c sweep: lr_c used on the image (--lr_c_scaling none), from the public 500 down by 2s.
LR_C_SWEEP = tuple(500 / 2**k for k in range(7))
SWEEP_WIDTHS = (64, 192)  # paper widths of the sweep's extra F16 50% runs (128 is in every case)


@dataclass(frozen=True)
class Profile:
    """How big the runs are. ``full`` is the paper's setting; ``quick`` fits a 2-core CPU."""

    name: str
    crop: int | None  # centre crop side, None for the whole image
    width_scale: float  # multiplies the paper's width (128 -> 16 at 1/8)
    iter_scale: float  # multiplies the paper's iteration count
    show_every: int
    save_every: int
    lr_c: float = 500.0  # DOP's --lr_c (500: the public code)
    lr_c_scaling: str = "none"  # DOP's --lr_c_scaling (none: the public code)
    imp_rounds: int = 16  # the mask search of the lottery prior (MaskSearch): IMP rounds and
    imp_iters: int = 3000  # iterations per round (16 and 3000: the LIP paper's)
    min_iters: int = 1  # a run's iterations are at least this, or its paper's if fewer
    sv_every: int = 1  # SV-ES checks every N iterations (1: the public code's)

    def width(self, paper_width: int) -> int:
        return max(1, round(paper_width * self.width_scale))

    def num_iter(self, paper_iters: int) -> int:
        """The paper's iterations scaled by ``iter_scale``, at least ``min_iters`` (or the
        paper's own count, if smaller): the quick profile runs the early-stopping paper's 5000
        for 3000, as the others' 150 000."""
        return max(1, round(paper_iters * self.iter_scale), min(paper_iters, self.min_iters))

    def config(self, variant: str, paper_width: int | None = None, paper_iters: int = FULL_ITERS,
               **settings) -> RunConfig:  # fmt: skip
        """A run of ``variant`` at this profile: the variant's settings, the crop, the width and
        iterations scaled from the paper's (``paper_width`` None: the prior's width), the rows,
        DOP's lr_c rule; finished runs reused, killed ones resumed (``--reuse``); then
        ``settings`` (image, noise, seed, name, ...)."""
        base = VARIANTS[variant]
        task = {"task": settings["task"]} if "task" in settings else {}
        width = paper_width or RunConfig(**base, **task).resolved().width  # the prior's there
        lr_c = {"lr_c": self.lr_c, "lr_c_scaling": self.lr_c_scaling}
        scaled = {"width": self.width(width), "num_iter": self.num_iter(paper_iters),
                  "show_every": self.show_every, "save_every": self.save_every,
                  "crop": self.crop, "quiet": True, "reuse": True}  # fmt: skip
        return RunConfig(**(base | (lr_c if base["method"] == "dop" else {}) | scaled | settings))


PROFILES = {
    "full": Profile("full", None, width_scale=1.0, iter_scale=1.0, show_every=500, save_every=5000),
    # F16 64x64 at width 16 runs at about 100 it/s on one CPU thread: 3000 iterations ~ 30-40 s.
    # DOP's lr_c by the sqrt rule from 1000: the lr_c sweep (docs/RESULTS.md, "The lr_c sweep")
    # found the best lr_c at 3000 iterations growing like sqrt(n) from 64x64 to 128x128, at twice
    # the public constant (125 at 64x64): a value tuned against the clean images.
    "quick": Profile(
        "quick",
        64,
        1 / 8,
        3000 / FULL_ITERS,
        show_every=100,
        save_every=500,
        lr_c=1000.0,
        lr_c_scaling="sqrt",
        imp_rounds=5,  # 5 rounds of 500 iterations: docs/RESULTS.md's LIP setting
        imp_iters=500,
        min_iters=3000,
        # SV-ES checks every 10th iteration: 3.4 s a check on this CPU, 16 min a run instead of
        # 2.6 h (docs/FIDELITY.md measures the difference against every iteration).
        sv_every=10,
    ),  # fmt: skip
}


@dataclass(frozen=True)
class Run:
    """One denoising.py run at the paper's scale; ``args`` applies a profile to it."""

    image: str
    nlevel: float
    variant: str  # a key of VARIANTS
    width: int | None = None  # the paper's width, before the profile's scale (None: the prior's)
    num_iter: int | None = None  # the paper's iterations, before the profile's scale (None:
    # the variant's: ES_ITERS for dip-es, FULL_ITERS for the others)
    seed: int = 0  # the same seed = the same noise realization for every variant
    lr_c: float | None = None  # DOP's lr_c used on the image (the lr_c sweep); None: the profile's
    noise: str = "salt_pepper"  # denoising.py --noise
    observe: bool = False  # the stopping rules watch (--stop RULE --stop_observe), finer rows
    rule: str = "wmv"  # the rule of an observing run: wmv (with emv) or sv (with wmv and emv)

    def paper_width(self) -> int:
        """The width at the paper's scale: the run's, or its prior's (128; 64 for drp)."""
        return self.width or RunConfig(**VARIANTS[self.variant]).resolved().width

    def needs_mask(self) -> bool:
        return needs_mask(self.variant)

    def paper_iters(self) -> int:
        if self.num_iter is not None:
            return self.num_iter
        return ES_ITERS if self.variant == "dip-es" else FULL_ITERS

    def ckpt(self, profile: Profile) -> str:
        sweep = "" if self.lr_c is None else f"_lrc{self.lr_c:g}"
        return (
            f"{self.image}_{noise_tag(self.noise, self.nlevel)}_{self.variant}"
            f"_w{profile.width(self.paper_width())}_s{self.seed}{sweep}"
            f"{('_sv' if self.rule == 'sv' else '_es') if self.observe else ''}"
        )

    def show_every(self, profile: Profile) -> int:
        """Rows 5x finer for runs whose oracle peak is compared with the rules' detections."""
        return profile.show_every // 5 if self.observe else profile.show_every

    def config(self, profile: Profile, out_dir: Path, data_dir: Path | None = None) -> RunConfig:
        """This run's settings at ``profile``, its outputs in ``out_dir``; a run of the lottery
        prior trains the mask that LIP_MASKS finds in ``out_dir``."""
        settings = {"image": self.image, "noise": self.noise, "nlevel": self.nlevel,
                    "seed": self.seed, "show_every": self.show_every(profile),
                    "ckpt": self.ckpt(profile), "out_dir": str(out_dir.resolve())}  # fmt: skip
        if data_dir is not None:
            settings["data_dir"] = str(Path(data_dir).resolve())
        if self.lr_c is not None:  # the sweep: lr_c used on the image, as given
            settings |= {"lr_c": self.lr_c, "lr_c_scaling": "none"}
        if self.observe:
            settings |= {"stop": self.rule, "stop_observe": True}
            settings |= {"sv_every": profile.sv_every} if self.rule == "sv" else {}
        if self.needs_mask():
            settings["mask"] = str(LIP_MASKS.mask(profile, out_dir.resolve()))
        return profile.config(self.variant, self.paper_width(), self.paper_iters(), **settings)


def noise_tag(noise: str, level: float) -> str:
    """p50 for 50% salt-and-pepper (the paper's), gaussian0.18 for the others."""
    return f"p{round(level * 100):02d}" if noise == "salt_pepper" else f"{noise}{level:g}"


@dataclass(frozen=True)
class Case:
    """One panel of a figure: an image at a noise level (of a noise type)."""

    image: str
    nlevel: float
    noise: str = "salt_pepper"

    @property
    def label(self) -> str:
        if self.noise == "salt_pepper":
            return f"{self.image}, {round(self.nlevel * 100)}%"
        return f"{self.image}, {self.noise} {self.nlevel:g}"

    def baselines_path(self, out_dir: Path) -> Path:
        """Where the classical baselines' scores on this case's observation are kept."""
        return out_dir / f"{self.image}_{noise_tag(self.noise, self.nlevel)}_s0_baselines.json"

    def run(self, variant: str, width: int | None = None, lr_c: float | None = None,
            observe: bool = False, rule: str = "wmv") -> Run:  # fmt: skip
        return Run(self.image, self.nlevel, variant, width, lr_c=lr_c, noise=self.noise,
                   observe=observe, rule=rule)  # fmt: skip


@dataclass(frozen=True)
class MaskSearch:
    """The stage a set with the lottery prior runs first (REFERENCE.md §5; lip.py): iterative
    magnitude pruning on the noisy observation of ``case`` (made as a case's runs make it, seed
    ``seed``) at the profile's crop and the variant's width, ``Profile.imp_rounds`` rounds of
    ``Profile.imp_iters`` iterations, otherwise the public code's search (the input convolutions
    dense, a new z every round). The case's image is held out (no compared case uses it), and the
    target is its noisy observation (the public code fits the clean image), so no ground truth
    enters the mask; the last round's mask is transferred to every case."""

    case: Case
    variant: str = "lip"
    seed: int = 0

    def width(self, profile: Profile) -> int:
        return profile.width(Run(self.case.image, self.case.nlevel, self.variant).paper_width())

    def ckpt(self, profile: Profile) -> str:
        tag = noise_tag(self.case.noise, self.case.nlevel)
        return f"{self.case.image}_{tag}_imp_w{self.width(profile)}_s{self.seed}"

    def mask(self, profile: Profile, out_dir: Path) -> Path:
        """The mask the runs train: the last round's (OUT_DIR/CKPT_mask_R.pt)."""
        return mask_path(out_dir, self.ckpt(profile), "mask", profile.imp_rounds)

    def search(self, profile: Profile, out_dir: Path, data_dir: Path) -> Search:
        """The IMP search (``experiments.imp``), its outputs in ``out_dir``."""
        rows = min(profile.show_every, profile.imp_iters)
        cfg = RunConfig(image=self.case.image, noise=self.case.noise, nlevel=self.case.nlevel,
                        method=VARIANTS[self.variant]["method"], width=self.width(profile),
                        num_iter=profile.imp_iters, show_every=rows, save_every=rows,
                        seed=self.seed, ckpt=self.ckpt(profile), quiet=True, crop=profile.crop,
                        out_dir=str(out_dir.resolve()),
                        data_dir=str(Path(data_dir).resolve()))  # fmt: skip
        return Search(cfg, (self.case.image,), profile.imp_rounds, target="noisy")

    def describe(self, profile: Profile) -> str:
        """The mask's provenance, for the tables' text."""
        nominal = 1 - (1 - PRUNE_FRACTION) ** profile.imp_rounds
        cfg = RunConfig(**VARIANTS[self.variant]).resolved()
        return (
            f"the lottery image prior (Wu et al., TMLR 2023): {cfg.method.upper()} with "
            f"{cfg.alg.capitalize()} {cfg.lr:g} on the sparse skip net of the mask found by IMP "
            f"(`lip.py`) on the noisy observation of "
            f"{self.case.label} (seed {self.seed}), a held-out image, so without ground truth: "
            f"{profile.imp_rounds} rounds of {profile.imp_iters} iterations at the profile's crop "
            f"and width {self.width(profile)}, 20% of the unmasked weights a round "
            f"({100 * nominal:.1f}% nominal), the two convolutions that read z kept dense and "
            f"a new z every round, as the public code; the same mask on every case "
            f"(`{self.ckpt(profile)}_mask_{profile.imp_rounds}.pt`, its sparsity in the runs' "
            f"reports)"
        )


# The comparison's lottery prior: masks found on scikit-image's astronaut, which no compared case
# uses, at the LIP paper's denoising noise (Gaussian σ = 25/255 ≈ 0.1).
LIP_MASKS = MaskSearch(Case("astronaut", 0.1, "gaussian"))
FIG3_CASES = tuple(Case(image, 0.5) for image in PAPER_IMAGES)
FIG4_CASES = tuple(Case("F16", level) for level in LEVELS)
# The README curve set: F16 at 50%, DOP at width 192 against DIP-L1 at widths 192 and 64.


def grid_runs(cases: tuple[Case, ...]) -> list[Run]:
    """Figures 3 and 4 show the noisy input, DIP-L1, DOP and the clean image of every case."""
    return [case.run(m) for case in cases for m in ("dip-l1", "dop")]


def curve_runs(cases: tuple[Case, ...]) -> list[Run]:
    """Figure 5 compares the learning curves of DOP, DIP and DIP-L1 on the same noise."""
    return [case.run(v) for case in cases for v in PAPER_VARIANTS]


def readme_runs(case: Case) -> list[Run]:
    """The public README's curve (F16 at 50%): DOP at width 192 against DIP-L1 at widths 192
    and 64, to 200 000 iterations."""
    return [Run(case.image, case.nlevel, v, width=w, num_iter=README_ITERS)
            for v, w in (("dop", 192), ("dip-l1", 192), ("dip-l1", 64))]  # fmt: skip


def sweep_runs(cases: tuple[Case, ...]) -> list[Run]:
    """The lr_c sweep: DOP at every lr_c of LR_C_SWEEP on every case, and on the first case at
    the other widths too (the poster's claim: the best α depends on neither image, sparsity nor
    width)."""
    runs = [case.run("dop", lr_c=lr_c) for case in cases for lr_c in LR_C_SWEEP]
    return runs + [cases[0].run("dop", w, lr_c) for w in SWEEP_WIDTHS for lr_c in LR_C_SWEEP]


def compare_runs(cases: tuple[Case, ...]) -> list[Run]:
    """The comparison table: every compared variant on every case, both rules watching."""
    return [case.run(v, observe=True) for case in cases for v in COMPARE_VARIANTS]


def sv_runs(cases: tuple[Case, ...]) -> list[Run]:
    """SV-ES's set: its variants on its cases, SV-ES and the two light rules watching."""
    return [case.run(v, observe=True, rule="sv") for case in cases for v in SV_VARIANTS]


COMPARE_CASES = tuple(Case(image, level, noise) for image in PAPER_IMAGES
                      for noise, level in COMPARE_NOISES)  # fmt: skip
SV_CASES = tuple(Case(image, level, noise) for noise, level in SV_NOISES
                 for image in PAPER_IMAGES)  # fmt: skip
PAPER_FIGURES = ("fig3", "fig4", "fig5", "readme")  # what "all" names
FIGURE_NAMES = (*PAPER_FIGURES, "lrc", "compare", "compare-sv")
DEFAULT_CASES = {"fig3": FIG3_CASES, "fig4": FIG4_CASES, "compare": COMPARE_CASES,
                 "compare-sv": SV_CASES}  # fmt: skip


def check_names(names: list[str]) -> list[str]:
    """The figure names, with "all" expanded to the paper's figures; InputError on an unknown
    name."""
    for name in names:
        if name != "all" and name not in FIGURE_NAMES:
            raise InputError(f"unknown figure {name!r}; choose from all, "
                             f"{', '.join(FIGURE_NAMES)}")  # fmt: skip
    expanded = [n for name in names for n in (PAPER_FIGURES if name == "all" else (name,))]
    return list(dict.fromkeys(expanded))


def figure_runs(names: list[str], cases: dict[str, tuple[Case, ...]] | None = None) -> list[Run]:
    """The distinct runs of the named figures ("all" = every figure), in a stable order.

    ``cases`` replaces the cases of Figures 3 and 4 (and so of Figures 5, the README curve, whose
    case is Figure 3's first, and the lr_c sweep) and of the comparisons; tests shrink them.
    """
    cases = DEFAULT_CASES | (cases or {})
    sets = {
        "fig3": lambda: grid_runs(cases["fig3"]),
        "fig4": lambda: grid_runs(cases["fig4"]),
        "fig5": lambda: curve_runs(cases["fig3"]) + curve_runs(cases["fig4"]),
        "readme": lambda: [run for case in cases["fig3"][:1] for run in readme_runs(case)],
        "lrc": lambda: sweep_runs(tuple(dict.fromkeys(cases["fig3"] + cases["fig4"]))),
        "compare": lambda: compare_runs(cases["compare"]),
        "compare-sv": lambda: sv_runs(cases["compare-sv"]),
    }
    return list(dict.fromkeys(run for name in check_names(names) for run in sets[name]()))
