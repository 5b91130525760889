"""What a prior is to the loop: a generator of K image estimates x = f(θ; z + η).

A prior is an ``nn.Module`` that defines

* ``input``: the input z (a buffer, or a parameter when it is trained), shape (K, ...), one per run;
* ``forward(eta)``: the K image estimates (K, C, H, W) from z + η, where η has z's shape and is
  drawn afresh by the loop at every iteration with std ``reg_noise_std`` (None when that is 0);
* ``trainable()``: the tensors gradient descent moves; the optimizer holds these and nothing else
  (by default every parameter that requires a gradient);
* ``defaults``: the optimizer, learning rate and input perturbation of its reference code, used
  where the command line does not set them;
* its constructor ``(image_shape, *, width, seeds, pad)``: K runs, each drawn from the streams of
  its own seed (``utils.seeding``), with every per-run tensor carrying the runs along dimension 0,
  so that K single-run states stack into the batch's state (``utils.state``);
* ``options(cfg)``: any further constructor arguments it takes from the settings;
* ``multiple`` and ``smallest_side``: the image sides it accepts (the command line crops to a
  multiple of ``multiple`` unless ``--pad``);
* for ``--low_memory``, a prior with deep activations has modules with a ``checkpointed``
  attribute that their forward consults (recompute the activations in the backward instead of
  keeping them, with ``torch.utils.checkpoint``; the result must be the same);
  ``checkpoint_activations`` sets it on all of them. A prior without such modules keeps every
  activation (it has few).

A new prior is a new file in models/ with such a class and an entry in ``models.PRIORS``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn


class Prior(nn.Module):
    defaults: ClassVar[dict[str, object]] = {"alg": "adam", "lr": 0.01, "reg_noise_std": 0.0}
    multiple: ClassVar[int] = 1
    input: Tensor

    @property
    def runs(self) -> int:
        return self.input.shape[0]

    def forward(self, eta: Tensor | None) -> Tensor:
        raise NotImplementedError

    def checkpoint_activations(self, on: bool) -> None:
        """Recompute the activations of every module that can (``checkpointed``) in the backward
        instead of keeping them from the forward (--low_memory), or keep them again."""
        for module in self.modules():
            if hasattr(module, "checkpointed"):
                module.checkpointed = on

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def count_trained(self) -> int:
        """Entries gradient descent moves, per run (reported with every run)."""
        return sum(p.numel() for p in self.trainable()) // self.runs

    @classmethod
    def options(cls, cfg: Any) -> dict[str, Any]:
        """Constructor arguments this prior takes from the run's settings (a RunConfig), beyond
        (image_shape, width, seeds, pad): e.g. the lottery prior's ticket from ``--mask``."""
        return {}

    @classmethod
    def smallest_side(cls, pad: bool) -> int:
        """The smallest image side this prior can produce (after the crop, or with --pad)."""
        return 1
