"""The autoencoder of self-validation early stopping (SV-ES; Li, Zhuang, Liang, Peng, Wang, Sun,
"Self-Validation: Early Stopping for Single-Instance Deep Generative Priors", BMVC 2021, arXiv
2110.12271; code sun-umn/Self-Validation at 1a2a7b8, DIP+AE/Gaussian_2/w256_P500/AE_model.py).
The rule that trains it online is ``utils.stopping.SelfValidation``.

The public net, for 3 x 512 x 512 images::

    encoder  7 x [conv3x3 stride 2, no bias ─ BN ─ ReLU]   3→32→64→128→128→128→128→1   512 → 4
    code     view(−1, 16) ─ 4 x Linear(16, 16, no bias), no activation between them
    decoder  view(−1, 1, 4, 4) ─ 7 x [bilinear up×2 ─ conv3x3, no bias ─ BN ─ ReLU]
             1→128→128→128→128→64→32→3, the last block BN ─ sigmoid instead of BN ─ ReLU

(1,076,552 parameters with the BatchNorms' affine pairs). The code is hard-wired to 4 x 4: the
public code reshapes every iterate to 3 x 512 x 512 and fails (or silently mixes images) at any
other size. Here the depth follows the size instead (docs/FIDELITY.md, "Self-validation early
stopping"): the AE works on S x S with S = ``side(h, w)``, the power of two nearest √(hw) within
[8, 512], with log2(S/4) levels (the public channels with the coarsest levels left out), so the
code is 16-d at every size and S = 512 is the public net exactly; an iterate of another size is
resized to S x S (bilinear, antialiased when it shrinks). C-channel images use C in and out.

``groups`` = K stacks K independent autoencoders into one net, as the skip net does (grouped
convolutions; the linear layers as grouped 1x1 convolutions, whose default initialisation is
``nn.Linear``'s): channel group k is run k's, so one forward trains K nets, each on its own
images, and its parameters are the K nets' concatenated along dimension 0.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

HIDDEN = (32, 64, 128, 128, 128, 128)  # the encoder's channels between the image and the code
# The online training (AE_train.py, AE_bp.py): one pass over the window per check in shuffled
# batches of 32, mean squared error, Adam with lr 1e-3 created afresh at every check.
BATCH, LR = 32, 1e-3
CODE_SIDE = 4  # the code: 1 channel of 4 x 4
LINEAR_LAYERS = 4
LARGEST_SIDE = 2 ** (len(HIDDEN) + 3)  # 512: the public net's input
SMALLEST_SIDE = 2 * CODE_SIDE  # one level


def side(h: int, w: int) -> int:
    """The autoencoder's square side for h x w images: the power of two nearest √(hw) (in
    log scale), within [8, 512]."""
    s = 2 ** round(math.log2(math.sqrt(h * w)))
    return min(LARGEST_SIDE, max(SMALLEST_SIDE, s))


def memory(channels: int, h: int, w: int, window: int, runs: int, itemsize: int = 4) -> int:
    """Bytes SV-ES holds for K = ``runs`` runs of h x w images: the K windows, K·W·C·S²
    values, exactly, and, estimated, what one run's training batch keeps for its backward (the
    runs are trained one after another): every layer's output for 32 images (about 5.2 GB at
    3 x 512 x 512), and the parameters with their gradients and Adam's two moments."""
    s = side(h, w)
    hidden = HIDDEN[: round(math.log2(s / CODE_SIDE)) - 1]
    down, up = [channels, *hidden, 1], [1, *reversed(hidden), channels]
    per_image, size = 0, s
    for c in down[1:]:  # conv, BN, ReLU outputs
        size //= 2
        per_image += 3 * c * size**2
    for a, b in zip(up, up[1:], strict=False):  # upsampled input; conv, BN, activation outputs
        size *= 2
        per_image += (a + 3 * b) * size**2
    parameters = sum(p.numel() for p in AutoEncoder(channels, s).parameters())
    return itemsize * (runs * window * channels * s * s + BATCH * per_image + 4 * parameters)


class AutoEncoder(nn.Module):
    """The public autoencoder on ``channels`` x S x S images (K = ``groups`` of them)."""

    def __init__(self, channels: int = 3, size: int = LARGEST_SIDE, groups: int = 1) -> None:
        super().__init__()
        levels = round(math.log2(size / CODE_SIDE))
        if 2**levels * CODE_SIDE != size or not 1 <= levels <= len(HIDDEN) + 1:
            raise ValueError(f"the autoencoder's side must be 8, 16, ..., 512, got {size}")
        self.groups = groups
        hidden = HIDDEN[: levels - 1]
        down = [channels, *hidden, 1]
        up = [1, *reversed(hidden), channels]
        g = groups
        encoder: list[nn.Module] = []
        for a, b in zip(down, down[1:], strict=False):
            encoder += [nn.Conv2d(g * a, g * b, 3, 2, 1, bias=False, groups=g),
                        nn.BatchNorm2d(g * b), nn.ReLU()]  # fmt: skip
        code = CODE_SIDE**2
        linear = [nn.Conv2d(g * code, g * code, 1, bias=False, groups=g)
                  for _ in range(LINEAR_LAYERS)]  # fmt: skip
        decoder: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(up, up[1:], strict=False)):
            last = i == len(up) - 2
            decoder += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                        nn.Conv2d(g * a, g * b, 3, 1, 1, bias=False, groups=g),
                        nn.BatchNorm2d(g * b), nn.Sigmoid() if last else nn.ReLU()]  # fmt: skip
        self.encoder = nn.Sequential(*encoder)
        self.linear = nn.Sequential(*linear)
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: Tensor) -> Tensor:
        """(N, K·C, S, S) → (N, K·C, S, S): image n of every run through its run's net."""
        n, g = x.shape[0], self.groups
        code = self.encoder(x).reshape(n, g * CODE_SIDE**2, 1, 1)  # view(−1, 16) per run
        code = self.linear(code).reshape(n, g, CODE_SIDE, CODE_SIDE)  # view(−1, 1, 4, 4)
        return self.decoder(code)
