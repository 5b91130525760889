"""Priors: generators of the image estimate (see models/prior.py for what a prior defines)."""

from models.lip import LipPrior
from models.prior import Prior
from models.skip import SkipNet, SkipPrior, min_input_size
from models.sparse import SparseTerm

PRIORS: dict[str, type[Prior]] = {"skip": SkipPrior, "lip": LipPrior}

__all__ = ["PRIORS", "LipPrior", "Prior", "SkipNet", "SkipPrior", "SparseTerm", "min_input_size"]
