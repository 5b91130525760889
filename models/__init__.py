"""Networks: the DIP skip net that DOP, DIP and DIP-L1 share."""

from models.skip import SkipNet, min_input_size

__all__ = ["SkipNet", "min_input_size"]
