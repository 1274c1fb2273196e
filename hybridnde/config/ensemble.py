"""Case section for ensemble rollouts of the hybrid model (``hybridnde rollout``)."""
from __future__ import annotations

from dataclasses import dataclass

from .fields import ConfigError, option

__all__ = ["RolloutConfig", "ROLLOUT_RUN_ONLY_KEYS"]

#: keys that change how a rollout runs but not what it computes (a resumed run may change them)
ROLLOUT_RUN_ONLY_KEYS = ("checkpoint_every", "threads")


@dataclass(frozen=True)
class RolloutConfig:
    members: int = option(64, "ensemble members", positive=True)
    steps: int = option(1000, "host solver steps per member (the last saved step is the largest multiple of "
                        "save_every)", positive=True)
    save_every: int = option(1, "keep every k-th step in the output", positive=True)
    batch_size: int = option(0, "members stepped together; the members are cut into global batches of this size and "
                             "each MPI rank runs whole batches (0: sized to memory_budget_mb, at most 1024 members "
                             "on CPU -- fewer with a closure, whose activations per call are kept within 8 MiB -- "
                             "/ 16384 on CUDA, independent of the number of ranks)", nonnegative=True)
    memory_budget_mb: float = option(1024.0, "batch_size = 0: working memory per rank for one batch (solver stages, "
                                     "closure activations, the saved states awaiting the next write)", positive=True)
    seed: int = option(1, "seed of drawn initial conditions; member i draws from the stream (seed, i) only",
                       nonnegative=True)
    blowup_threshold: float = option(1e6, "a member whose saved state is not finite or has a component with "
                                     "|u| above this is marked blew_up and saved as NaN from then on", positive=True)
    checkpoint_every: int = option(0, "steps between restart checkpoints for --resume, rounded up to whole output "
                                   "chunks (output.time_chunk saved times); 0: after every output chunk",
                                   nonnegative=True)
    initial_conditions: str = option(
        "draw", "'draw': from [initial_condition] with rollout.seed, without time.spinup_steps (states off the attractor "
        "for a case that spins up: roll out from a truth file to start on it); or a NetCDF path (relative to the working "
        "directory) with u(member, time, ...) (e.g. a truth file): the first time of its first `members` "
        "members, filtered onto the host grid; the rollout keeps the file's member indices and starts at its first time")
    threads: int = option(1, "CPU threads per rank; results are bit-identical across rank counts only with equal "
                          "threads per rank (threaded FFTs split the batch differently), so scale with ranks "
                          "(mpiexec -n) rather than threads; 0: torch's default", nonnegative=True)

    def validate(self, where: str) -> None:
        if self.initial_conditions != "draw" and not self.initial_conditions.endswith((".nc", ".nc4")):
            raise ConfigError(f"{where}.initial_conditions = {self.initial_conditions!r}: give \"draw\" or the path "
                              "of a NetCDF file (.nc) with u(member, time, x|component), e.g. a truth file")
        if self.steps < self.save_every:
            raise ConfigError(f"{where}.steps = {self.steps} is below {where}.save_every = {self.save_every}: "
                              "nothing after the initial state would be saved")
