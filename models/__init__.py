"""Priors: generators of the image estimate (see models/prior.py for what a prior defines)."""

from models.prior import Prior
from models.skip import SkipNet, SkipPrior, min_input_size
from models.sparse import SparseTerm

PRIORS: dict[str, type[Prior]] = {"skip": SkipPrior}

__all__ = ["PRIORS", "Prior", "SkipNet", "SkipPrior", "SparseTerm", "min_input_size"]
