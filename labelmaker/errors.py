"""Error classes that stages and the CLI understand.

Every error a user can fix names the scene, the file and the fix; the orchestrator reads
`error_class` to decide whether a retry can help (bad input: no; preempted: yes).
"""
from __future__ import annotations

from pathlib import Path


class LabelmakerError(Exception):
    """Base of all errors we raise on purpose."""

    error_class = "crashed"
    exit_code = 1


class BadInputError(LabelmakerError):
    """The scene's input is wrong; retrying cannot help, fixing the input can."""

    error_class = "bad_input"
    exit_code = 2

    def __init__(self, scene: str, file: str | Path | None, problem: str, fix: str):
        self.scene = scene
        self.file = str(file) if file is not None else None
        self.problem = problem
        self.fix = fix
        where = f" file '{self.file}':" if self.file else ""
        super().__init__(f"scene '{scene}':{where} {problem}. Fix: {fix}")


class StageDependencyError(LabelmakerError):
    """A stage's input stage has not finished; run that one first."""

    error_class = "dependency_failed"
    exit_code = 3

    def __init__(self, scene: str, stage: str, missing: str, fix: str):
        self.scene = scene
        self.stage = stage
        super().__init__(f"scene '{scene}': stage '{stage}' needs '{missing}', which is not done. Fix: {fix}")


class OutOfMemoryError(LabelmakerError):
    """A model does not fit the device even one frame at a time; a bigger device or a smaller
    input can help, retrying on the same one cannot."""

    error_class = "out_of_memory"
    exit_code = 4

    def __init__(self, scene: str, model: str, problem: str, fix: str):
        self.scene = scene
        self.model = model
        super().__init__(f"scene '{scene}': model '{model}': {problem}. Fix: {fix}")


class SetupError(LabelmakerError):
    """The machine is not set up for a configured model (weights, compiled ops, packages):
    fixing the installation helps, retrying does not."""

    error_class = "setup"
    exit_code = 5

    def __init__(self, what: str, problem: str, fix: str):
        self.what = what
        super().__init__(f"{what}: {problem}. Fix: {fix}")
