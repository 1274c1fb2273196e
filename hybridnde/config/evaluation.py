"""Case section for evaluating a rollout against the truth."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .fields import ConfigError, option, warn_once

__all__ = ["EvaluateConfig", "warn_stale_lyapunov_exponent"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    vpt_threshold: float = option(0.5, "valid prediction time: first time the normalised error exceeds this", positive=True)
    error_scale: str = option("rms", "what the error is normalised by: rms = the truth's root-mean-square state norm "
                              "(Pathak et al. 2018); anomaly = that of its departure from the mean state (its standard "
                              "deviation; for states whose mean is far from 0, e.g. Lorenz-63)",
                              choices=("rms", "anomaly"))
    lyapunov_exponent: float | None = option(None, "leading Lyapunov exponent of the truth, to report times in Lyapunov times",
                                             positive=True)
    lyapunov_members: int = option(8, "--lyapunov: members measured (the first paired ones), for the model and the truth",
                                   positive=True)
    lyapunov_times: float = option(20.0, "--lyapunov: Lyapunov times measured per member (of lyapunov_exponent), after a "
                                   "transient half as long; without lyapunov_exponent the files' span", positive=True)


def warn_stale_lyapunov_exponent(given: Mapping[str, Any], case: Any, source: str, overridden: Iterable[str]) -> None:
    """Warn (once per process and message: every ``--compare`` variant is parsed) when ``--set`` (or
    ``[quick]``) changed the dynamics of the case file ``given`` (a key of its ``[system]`` other than
    ``physics.DISCRETISATION_KEYS``) but did not set its ``evaluate.lyapunov_exponent`` (``overridden``: the
    dotted keys they set): the times reported in Lyapunov times would be the file's system's."""
    from .physics import DISCRETISATION_KEYS, parse_system

    evaluate, system = given.get("evaluate"), given.get("system")
    stated = evaluate.get("lyapunov_exponent") if isinstance(evaluate, Mapping) else None
    if stated is None or "evaluate.lyapunov_exponent" in set(overridden) or not isinstance(system, Mapping):
        return
    try:
        before = dataclasses.asdict(parse_system(system, validate=False))
    except ConfigError:
        return
    now = dataclasses.asdict(case.system)
    changed = sorted(key for key in now if key not in DISCRETISATION_KEYS and now[key] != before.get(key))
    message = (f"{source}: evaluate.lyapunov_exponent = {stated:g} is for its own [system], but "
               f"{', '.join(f'system.{key}' for key in changed)} changed; times in Lyapunov times would use the old "
               "exponent: set evaluate.lyapunov_exponent for this system (run --lyapunov measures it)")
    if changed:
        warn_once(log, message)
