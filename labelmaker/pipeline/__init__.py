"""Stages, their records, the batch planner and the executors that run them.

Plugins of this package's registries are imported here (a registry never imports its plugins).
"""
from . import slurm  # noqa: F401  (registers the slurm executor)
