"""Stages, their records, the stage table, the batch planner and the executors that run them.

Plugins of this package's registries are imported here (a registry never imports its plugins):
the stage modules register their rows of the stage table (table.STAGES), slurm.py its executor.
"""
from . import eval_stages, label_stages, mask_stages, slurm, stages  # noqa: F401  (register themselves)
