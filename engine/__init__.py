"""The engine: a run's settings (``config``), its observation (``data``), the loop (``loop``), its
outputs (``outputs``) and the one runner that ties them (``runner``).

    from engine import RunConfig, recover
    out = recover(RunConfig(image="astronaut", crop=64, width=16, num_iter=300, gpu="cpu"))
    out.image, out.history[-1], out.report["final_psnr"]
"""

from engine.config import RunConfig
from engine.runner import Outcome, recover, run

__all__ = ["Outcome", "RunConfig", "recover", "run"]
