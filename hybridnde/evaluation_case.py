"""Which case an evaluated file stores (``case_toml``) and whether a rollout and its reference hold the
same true system: a rollout is scored only against a truth of its own system."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from .config import CaseConfig, ConfigError, parse_case_text
from .config.physics import DISCRETISATION_KEYS
from .io import DataError

__all__ = ["case_from_attributes", "system_differences", "check_same_system", "DISCRETISATION_KEYS"]

log = logging.getLogger(__name__)


def case_from_attributes(attributes: Mapping[str, Any], name: str, *, quiet: bool = False) -> CaseConfig | None:
    """The case stored in a file's ``case_toml`` global attribute, or ``None`` (logged unless ``quiet``)
    if absent or unreadable; ``attributes``: the file's global attributes (``dataset.attrs``)."""
    text = attributes.get("case_toml", "")
    if not text:
        return None
    try:
        return parse_case_text(text, source=f"{name} (case_toml attribute)")
    except ConfigError as error:
        if not quiet:
            log.warning("%s: cannot use its stored case (%s); case-dependent metrics are skipped", name, error)
        return None



def system_differences(case: CaseConfig, other: CaseConfig) -> list[str]:
    """``system.key (other's value -> case's value)`` for each physics parameter of ``[system]`` in
    which the two cases differ (``DISCRETISATION_KEYS`` left out); ``[]`` for the same system."""
    return case.changed_keys(other.to_toml(), ("system",), skip=[("system", key) for key in DISCRETISATION_KEYS])


def check_same_system(rollout_attrs: Mapping[str, Any], reference_attrs: Mapping[str, Any], rollout_path: Path,
                       reference_path: Path) -> str | None:
    """Refuse a rollout made for another true system than the reference's (``DataError``): each file's
    ``case_toml`` ``[system]`` is the true system (a hybrid's host differs from it only through
    ``[hybrid.system]``). A prediction that is itself a simulation (``stage = "simulate"``), say with
    perturbed parameters, is a model of its own system: scored, with a warning and the note returned. Files
    without a stored case are not checked."""
    rollout = case_from_attributes(rollout_attrs, str(rollout_path), quiet=True)  # (warned where it is used)
    reference = case_from_attributes(reference_attrs, str(reference_path), quiet=True)
    if rollout is None or reference is None:
        return None
    if rollout.system.name != reference.system.name:  # (their states' dimensions differ too: say why)
        raise DataError(f"{rollout_path} holds {rollout.system.name} states (case {rollout.case.name!r}) and "
                        f"{reference_path} {reference.system.name} states (case {reference.case.name!r}); score a "
                        "prediction against a reference of its own system")
    differing = system_differences(reference, rollout)
    if not differing:
        return None
    listed = f"{'; '.join(differing)} (rollout -> reference)"
    if rollout_attrs.get("stage") == "simulate":
        note = (f"{rollout_path} was simulated for another system than the reference: {listed}; scored as a model "
                "of the reference's system")
        log.warning(note)
        return note
    raise DataError(f"{rollout_path} is a rollout of another system than {reference_path} holds: {listed}; score it "
                    f"against a reference simulated with the rollout's [system] (`hybridnde simulate CASE.toml`, "
                    f"with the case the rollout was made with), or roll out the reference's case")
