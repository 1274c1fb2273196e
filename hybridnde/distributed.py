"""MPI for ensemble rollouts (mpi4py): ranks, one device per rank, whole batches per rank, failures.

Under ``mpiexec -n R`` every rank runs the same command. Members are cut into global batches
(``rollout.batch_size``, independent of ``R``) and each rank takes a contiguous run of whole
batches, so every member is stepped in the same batch on any number of ranks and the output is the
same bit for bit. Rank 0 gathers the saved chunks and writes the one file. A rank that fails logs
its error and aborts the whole job (``MPI_Abort``): no rank waits forever on a dead partner.

Without a launcher (or without mpi4py) everything runs in one process through ``SerialCommunicator``;
mpi4py is imported only under a launcher, since importing it initialises MPI.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Mapping, Sequence

import torch

from .config import ConfigError
from .io import DataError
from .systems import resolve_device

__all__ = ["Communicator", "SerialCommunicator", "MPICommunicator", "world", "launched_by_mpi", "rank_device",
           "rank_batches", "largest_batch_size_for", "idle_ranks_warning", "agree", "require_same", "RankFailure"]

log = logging.getLogger(__name__)

#: environment variables that MPI launchers set in every rank (Open MPI, PMIx, MPICH/Hydra, Intel MPI)
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS")


class RankFailure(RuntimeError):
    """Another rank failed; raised on every rank so that all stop together.

    ``bad_input``: the failure was a ``ConfigError``/``DataError`` (exit 2 rather than 1).
    """

    def __init__(self, message: str, *, bad_input: bool = False):
        super().__init__(message)
        self.bad_input = bad_input


class Communicator:
    """What the rollout needs from MPI. ``rank``/``size`` in the world; ``local_rank`` on the node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    def gather(self, item: Any) -> list[Any] | None:
        """Every rank's ``item`` at rank 0 (in rank order), ``None`` elsewhere."""
        raise NotImplementedError

    def allgather(self, item: Any) -> list[Any]:
        raise NotImplementedError

    def bcast(self, item: Any) -> Any:
        """Rank 0's ``item`` on every rank."""
        raise NotImplementedError

    def allreduce_max(self, value: int) -> int:
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (never returns)."""
        raise NotImplementedError


class SerialCommunicator(Communicator):
    """One process: collectives are the identity."""

    def gather(self, item: Any) -> list[Any]:
        return [item]

    def allgather(self, item: Any) -> list[Any]:
        return [item]

    def bcast(self, item: Any) -> Any:
        return item

    def allreduce_max(self, value: int) -> int:
        return value

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:  # pragma: no cover - a single process simply raises
        raise SystemExit(code)


class MPICommunicator(Communicator):
    """``MPI.COMM_WORLD`` through mpi4py's pickle-based collectives (chunks are a few MB at most)."""

    def __init__(self):
        from mpi4py import MPI

        self._mpi = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()

    def gather(self, item: Any) -> list[Any] | None:
        return self.comm.gather(item, root=0)

    def allgather(self, item: Any) -> list[Any]:
        return self.comm.allgather(item)

    def bcast(self, item: Any) -> Any:
        return self.comm.bcast(item, root=0)

    def allreduce_max(self, value: int) -> int:
        return int(self.comm.allreduce(int(value), op=self._mpi.MAX))

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self.comm.Abort(code)


def launched_by_mpi() -> bool:
    """True when an MPI launcher (mpiexec, mpirun, srun with PMI/PMIx) started this process."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


_WORLD: Communicator | None = None


def world() -> Communicator:
    """The job's communicator: MPI under a launcher when mpi4py is importable, else one process."""
    global _WORLD
    if _WORLD is None:
        if launched_by_mpi():
            try:
                _WORLD = MPICommunicator()
            except ImportError:
                # each rank would be rank 0 of 1 and make the same files: refused (exit 2) on every rank
                sizes = {os.environ.get(name) for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")} - {None}
                if sizes != {"1"}:
                    raise ConfigError("an MPI launcher started this process but mpi4py is not installed, so the "
                                      "ranks cannot share the work: pip install 'hybridnde[mpi]', or run without "
                                      "mpiexec") from None
                _WORLD = SerialCommunicator()
        else:
            _WORLD = SerialCommunicator()
    return _WORLD


def rank_device(name: str, local_rank: int) -> torch.device:
    """The device of a rank: ``auto`` and a bare ``cuda`` mean ``cuda:(local_rank % device_count)``
    when CUDA is there (else CPU); ``cuda:N`` and ``cpu`` are taken as given."""
    if name == "cuda" and torch.cuda.is_available():
        name = "auto"
    return resolve_device(name, local_rank=local_rank)


def rank_batches(batches: Sequence[tuple[int, int]], size: int, rank: int) -> list[tuple[int, int]]:
    """Rank ``rank``'s contiguous run of whole ``batches`` out of ``size`` ranks (first ranks get one
    more when they do not divide evenly)."""
    per_rank, extra = divmod(len(batches), size)
    first = rank * per_rank + min(rank, extra)
    return list(batches[first:first + per_rank + (rank < extra)])


def largest_batch_size_for(members: int, ranks: int) -> int:
    """The largest batch size that gives each of ``ranks`` ranks a batch of ``members``: the largest
    ``b`` with ``ceil(members / b) >= ranks`` (needs ``members >= ranks >= 2``)."""
    if not members >= ranks >= 2:
        raise ValueError(f"members={members}, ranks={ranks}: needs members >= ranks >= 2")
    return -(-members // (ranks - 1)) - 1


def idle_ranks_warning(members: int, batches: int, batch_size: int, ranks: int) -> str:
    """What to say when ``ranks`` ranks share fewer ``batches`` (of ``batch_size`` of ``members``): which
    ranks idle, and the batch size (or rank count) that would use them all."""
    idle = f"rank {batches} has" if batches == ranks - 1 else f"ranks {batches}-{ranks - 1} have"
    if members < ranks:  # no batch size helps: fewer members than ranks
        advice = f"for {members} member(s) use at most {batches} rank(s)" + (
            f", or {members} with rollout.batch_size = 1" if batches < members else "")
    else:
        advice = f"set rollout.batch_size <= {largest_batch_size_for(members, ranks)} to use them all"
    return f"{ranks} ranks but only {batches} batch(es) of {batch_size} members: {idle} nothing to do; {advice}"


def agree(comm: Communicator, error: BaseException | None) -> None:
    """Collective check after a phase that can fail on some ranks only (bad input, no device).

    Every rank passes the error it hit or ``None``. If any rank failed, every rank raises: the
    lowest failing rank's own exception on that rank and on rank 0 (which reports it) as the same
    type, ``RankFailure`` on the others. Call it on all ranks, or none.
    """
    reports = comm.allgather(None if error is None else (type(error), str(error)))
    failed = [(rank, report) for rank, report in enumerate(reports) if report is not None]
    if not failed:
        return
    rank, (kind, message) = failed[0]
    bad_input = issubclass(kind, (ConfigError, DataError))
    if error is not None and comm.rank == rank:
        raise error
    if comm.rank == 0:
        try:
            replica = kind(f"rank {rank}: {message}")
        except Exception:  # an exception type that does not take one message
            replica = RankFailure(f"rank {rank}: {kind.__name__}: {message}", bad_input=bad_input)
        raise replica
    raise RankFailure(f"rank {rank} failed: {message}", bad_input=bad_input)


def require_same(comm: Communicator, values: Mapping[str, Any], meaning: Mapping[str, str]) -> None:
    """Collective check that every rank holds rank 0's ``values`` (checksums of what each rank read
    itself: the case, the closure, the initial conditions). Each rank reads its inputs on its own, and
    rank 0 alone records them in the file: a file rewritten while the job started, node-local copies
    that differ, or another ``--set`` on one rank would otherwise give a file mixing two set-ups under
    one description. Raises ``ConfigError`` on rank 0 (``RankFailure`` on the others) naming the first
    rank that differs and ``meaning[key]`` for each key that does. A value ``None`` is not compared (a
    rank that did not compute it). Call it on all ranks, or none.
    """
    everyone = comm.allgather(dict(values))
    reference = everyone[0]
    for rank, theirs in enumerate(everyone[1:], start=1):
        differing = [key for key, value in reference.items()
                     if value is not None and theirs.get(key) is not None and theirs[key] != value]
        if differing:
            message = (f"rank {rank} read another {' and another '.join(meaning.get(key, key) for key in differing)} "
                       f"than rank 0: every rank must run the same case, --set options, closure and initial "
                       f"conditions (files rewritten while the job started, or node-local copies that differ?)")
            if comm.rank == 0:
                raise ConfigError(message)
            raise RankFailure(message, bad_input=True)
