"""Priors: generators of the image estimate (see models/prior.py for what a prior defines)."""

from models.decoder import DecoderNet, DecoderPrior
from models.drp import ProjectorPrior
from models.lip import LipPrior
from models.prior import Prior
from models.skip import SkipNet, SkipPrior, min_input_size
from models.sparse import SparseTerm

PRIORS: dict[str, type[Prior]] = {"skip": SkipPrior, "lip": LipPrior, "decoder": DecoderPrior,
                                  "drp": ProjectorPrior}  # fmt: skip

__all__ = ["PRIORS", "DecoderNet", "DecoderPrior", "LipPrior", "Prior", "ProjectorPrior",
           "SkipNet", "SkipPrior", "SparseTerm", "min_input_size"]  # fmt: skip
