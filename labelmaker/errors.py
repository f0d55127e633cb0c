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


class ConfigError(LabelmakerError):
    """The command line or config is wrong (a misspelt key, a value of the wrong type, a malformed
    option): nothing ran yet; fixing the command helps."""

    error_class = "config"
    exit_code = 2

    def __init__(self, problem: str, fix: str):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}. Fix: {fix}")


def one_line(message: str) -> str:
    """An error message as the single line a user sees (tools we call put newlines in theirs)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def config_message(err: Exception, known_keys: list[str] | None = None) -> str:
    """Hydra's or OmegaConf's complaint about an override as one line, without its advice to
    append the key with `+` (our configs are typed: a key that is not in the schema is a typo,
    never an addition), with the closest known keys when a key is misspelt."""
    import difflib
    import re

    text = one_line(str(err))
    cause = err.__cause__ or err.__context__
    if text.startswith("Error merging override") and cause is not None:
        text += ": " + one_line(str(cause))
    text = re.sub(r"\s*(full_key|object_type|reference_type):.*$", "", text)
    text = re.sub(r"\s*Config search path:.*$", "", text)
    text = re.sub(r"\s*\w+_schema\b", "", text)  # (the schemas registered beside each config group's options)
    missing = re.match(r"Could not override '([^']+)'", text)
    if missing:
        name = missing.group(1)
        text = f"there is no config key '{name}'"
        close = difflib.get_close_matches(name, known_keys or [], n=3, cutoff=0.6)
        if close:
            text += f" (did you mean {' or '.join(close)}?)"
    return re.sub(r"\s*To append to your config use \+\S*", "", text)
