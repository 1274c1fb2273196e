"""``run.json``: the run directory's log of its stages (what ran, with which configuration, how long).

Whether a stage is up to date is decided by its output's own metadata (a truth file's
``config_checksum`` attribute, a closure's metadata, ...), so a lost ``run.json`` costs nothing but
wall times. The record adds what the outputs cannot say: when a stage started with a checksum but
did not finish (a crash), so that the next run resumes from the stage's checkpoint only when the
configuration is the same, and the wall time of each stage as the pipeline measured it.
"""
from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Any

from ..io import atomic_path

__all__ = ["RunRecord", "RECORD_NAME"]

log = logging.getLogger(__name__)

RECORD_NAME = "run.json"


class RunRecord:
    """The stages of one run directory, keyed by their output's path relative to it."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / RECORD_NAME
        self.stages: dict[str, dict[str, Any]] = {}
        self.runs: list[dict[str, Any]] = []
        if self.path.is_file():
            try:
                content = json.loads(self.path.read_text())
                self.stages = dict(content.get("stages", {}))
                self.runs = list(content.get("runs", []))
            except (OSError, ValueError, AttributeError) as error:
                log.warning("%s is unreadable (%s); stage wall times start afresh", self.path, error)

    def key(self, output: Path) -> str:
        try:
            return str(Path(output).relative_to(self.directory))
        except ValueError:
            return str(output)

    def entry(self, output: Path) -> dict[str, Any]:
        return self.stages.get(self.key(output), {})

    def started(self, output: Path, stage: str, checksum: str) -> None:
        self.stages[self.key(output)] = {"stage": stage, "started": checksum, "started_at": _now()}
        self.save()

    def finished(self, output: Path, stage: str, checksum: str, seconds: float) -> None:
        self.stages[self.key(output)] = {"stage": stage, "checksum": checksum, "seconds": seconds,
                                         "finished_at": _now()}
        self.save()

    def interrupted_with(self, output: Path) -> str | None:
        """The checksum a stage started with and never finished (``None`` if it finished or never ran)."""
        entry = self.entry(output)
        return entry.get("started") if "checksum" not in entry else None

    def seconds(self, output: Path, checksum: str) -> float | None:
        entry = self.entry(output)
        return entry.get("seconds") if entry.get("checksum") == checksum else None

    def add_run(self, summary: dict[str, Any]) -> None:
        self.runs.append({"at": _now(), **summary})
        self.save()

    def save(self) -> None:
        with atomic_path(self.path) as temporary:
            temporary.write_text(json.dumps({"stages": self.stages, "runs": self.runs[-50:]}, indent=2) + "\n")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
