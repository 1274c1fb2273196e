"""Keys a case may set that have no effect given its other keys (``training.fd_stencil`` with
``training.regularizer = "jvp"``): ``hybridnde run --compare`` runs variants that differ only in such
keys once. (The shipped cases set ``regularizer_weight`` beside ``regularizer = "none"``, for a
``--compare`` of the regularizer, so such keys are not warned about on their own.)

Each rule names the keys and the condition under which the code reads them (training/assembly.py,
training/trainer.py, training/build.py, models.py, systems.py); outside it the key changes nothing,
not even the cost. Keys that change only the cost or the files (batch sizes, threads, checkpoints)
are not here: comparing them is comparing speed.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .case import CaseConfig

__all__ = ["keys_without_effect", "effective_case"]

#: the [system] keys a host without physics (neural_ode, second_order) reads: its grid
GRID_KEYS = ("n_points", "domain_length")
#: why such a host's other overrides change nothing
NO_PHYSICS = {"neural_ode": "its host has no physics", "second_order": "its host knows only dq/dt = v"}


def keys_without_effect(case: CaseConfig) -> dict[str, str]:
    """``{"section.key": why}`` for each key that this case's other keys switch off, whatever its value;
    ``hybrid.system.<key>`` for overrides a host without physics does not read."""
    t = case.training
    penalty, regularizer = t.jacobian_penalty, t.regularizer
    rules = [
        (("regularizer_weight",), regularizer != "none", "training.regularizer = 'none'"),
        (("probe_distribution", "normalize_probes"), regularizer == "jvp",
         f"training.regularizer = {regularizer!r} (they shape jvp's probes)"),
        (("probes",), regularizer == "jvp" or penalty in ("frobenius", "rnode"),
         f"training.regularizer = {regularizer!r} and training.jacobian_penalty = {penalty!r}"),
        (("fd_stencil",), regularizer == "fd", f"training.regularizer = {regularizer!r}"),
        (("regularizer_warmup_epochs",), regularizer != "none" or penalty != "none",
         "training.regularizer and training.jacobian_penalty = 'none'"),
        (("jacobian_penalty_weight", "jacobian_penalty_field"), penalty != "none", "training.jacobian_penalty = 'none'"),
        (("jacobian_penalty_iterations",), penalty in ("spectral", "condition"),
         f"training.jacobian_penalty = {penalty!r} (spectral and condition iterate)"),
        (("min_learning_rate",), t.lr_schedule == "cosine", f"training.lr_schedule = {t.lr_schedule!r}"),
        (("lr_step_epochs", "lr_gamma"), t.lr_schedule == "step", f"training.lr_schedule = {t.lr_schedule!r}"),
        (("adaptive_method",), t.integration != "step", "training.integration = 'step'"),
        (("homotopy_stages", "homotopy_epochs_per_stage", "homotopy_ratio", "coupling", "smoothing"),
         t.method == "homotopy", f"training.method = {t.method!r}"),
        (("shooting_segments", "continuity_weight"), t.method == "multiple_shooting", f"training.method = {t.method!r}"),
        (("observation_noise_scale",), t.observation_noise > 0, "training.observation_noise = 0"),
    ]
    unused = {f"training.{key}": why for keys, read, why in rules if not read for key in keys}
    if case.model.kind != "periodic_cnn":
        unused["model.kernel_size"] = f"model.kind = {case.model.kind!r}"
    if case.hybrid.setup in NO_PHYSICS:  # (systems.build_host_solver keeps the host's shape and grid alone)
        for key in case.hybrid.system:
            if key not in GRID_KEYS:
                unused[f"hybrid.system.{key}"] = f"hybrid.setup = {case.hybrid.setup!r} ({NO_PHYSICS[case.hybrid.setup]})"
    return unused


def effective_case(case: CaseConfig) -> CaseConfig:
    """``case`` with its keys without effect at their defaults (the unread overrides of a host without
    physics dropped): two cases whose effective cases have equal checksums give the same results."""
    unused = keys_without_effect(case)
    sections: dict[str, Any] = {}
    for name in ("training", "model"):
        config = getattr(case, name)
        defaults = {key.split(".", 1)[1]: field.default for key in unused if key.startswith(f"{name}.")
                    for field in dataclasses.fields(config) if field.name == key.split(".", 1)[1]}
        sections[name] = dataclasses.replace(config, **defaults)
    overrides = {key: value for key, value in case.hybrid.system.items() if f"hybrid.system.{key}" not in unused}
    return case.replace(**sections, hybrid=dataclasses.replace(case.hybrid, system=overrides))
