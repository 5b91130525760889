"""Tasks: the forward models of observations (see tasks/task.py for what a task defines)."""

from tasks.blind_deblur import BlindDeblur
from tasks.deblur import Deblur
from tasks.denoise import Denoise
from tasks.inpaint import Inpaint
from tasks.phase_retrieval import PhaseRetrieval
from tasks.sr import SuperResolution
from tasks.task import Observation, Task

TASKS: dict[str, Task] = {task.name: task for task in (Denoise(), Inpaint(), SuperResolution(),
                                                        Deblur(), BlindDeblur(),
                                                        PhaseRetrieval())}  # fmt: skip

__all__ = ["TASKS", "Observation", "Task"]
