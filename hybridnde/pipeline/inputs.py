"""Whether an output is still that of its input files: the data checksums ``hybridnde run`` compares
(each file's computed once per run, and again if it changes), for the truth and reference (their
``initial_condition.file``), the closure (its truth) and the rollouts (their reference)."""
from __future__ import annotations

import logging
from pathlib import Path

from ..checksums import records_data
from ..config import CaseConfig
from . import stages

__all__ = ["InputChecks"]

log = logging.getLogger("hybridnde.pipeline.runner")  # the run's messages, under the name they had before


class InputChecks:
    """The checksum cache and the checks of a run's outputs against the input files they were made from."""

    def __init__(self):
        self._checksums: dict[tuple[Path, int, int, bool], str] = {}

    def checksum(self, path: Path, *, of_bytes: bool = False) -> str:
        """SHA-256 of a NetCDF file's data (``data.data_checksum``), or of its bytes (``of_bytes``: what
        outputs recorded before data checksums), each computed once per run call (and again if the file
        changes)."""
        from ..checksums import data_checksum, file_checksum

        status = path.stat()
        key = (path.resolve(), status.st_size, status.st_mtime_ns, of_bytes)
        if key not in self._checksums:
            self._checksums[key] = (file_checksum if of_bytes else data_checksum)(path)
        return self._checksums[key]

    def input_changed(self, found: str | None, expected: str, recorded: str | None, source: Path, *,
                      label: str, name: str, output: Path) -> str | None:
        """``found``, unless the output is up to date by its configuration but was made from another
        ``source`` file than the one there now (``recorded``: the checksum the output keeps of its data,
        or of its bytes in older outputs; not checked when it keeps none): then ``None``, so the stage
        runs again. A file written again with the same data is the same file."""
        if (found != expected or not recorded or not source.is_file()
                or records_data(recorded, source, self.checksum(source),
                                bytes_sum=lambda: self.checksum(source, of_bytes=True))):
            return found
        log.warning("%s%s: %s changed since %s was made from it (checksum %s..., now %s...); making it again",
                    label, name, source, output, recorded[:12], self.checksum(source)[:12])
        return None

    def rollout_identity(self, path: Path, expected: str, reference: Path, *, label: str, name: str,
                         legacy: str) -> str | None:
        """What a rollout file records of its making (configuration and closure), ``None`` where it was
        made from another ``reference`` file than the one there now (``input_changed``); ``legacy``: the
        same identity as recorded before the batch-size keys were left out (``rollout_checksum``)."""
        found = stages.netcdf_identity(path, with_closure=True)
        found = expected if found == legacy else found
        return self.input_changed(found, expected, stages.recorded_input(path), reference, label=label, name=name,
                                  output=path)

    def simulation_identity(self, path: Path, expected: str, of: CaseConfig, *, label: str, name: str) -> str | None:
        """What a truth or reference file records of its making; ``None`` where it was made from another
        ``initial_condition.file`` (of the case ``of``) than the one there now: its configuration alone
        says nothing of the file's states."""
        found, initial_condition = stages.netcdf_identity(path), of.initial_condition
        if initial_condition.distribution != "file":
            return found
        return self.input_changed(found, expected, stages.recorded_input(path), Path(initial_condition.file),
                                  label=label, name=name, output=path)
