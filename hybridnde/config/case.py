"""A whole case file: TOML -> validated ``CaseConfig``, with ``--set`` and ``--quick`` overrides."""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
import tomli_w

from .consistency import check_consistency
from .ensemble import RolloutConfig
from .evaluation import EvaluateConfig, warn_stale_lyapunov_exponent
from .fields import ConfigError, from_mapping, to_mapping
from .hybrid import HybridConfig
from .learning import ModelConfig, TrainingConfig
from .physics import (CaseInfo, ComputeConfig, InitialConditionConfig,
                      KuramotoSivashinskyConfig, OutputConfig, SystemConfig, TimeConfig, parse_system)

__all__ = ["CaseConfig", "load_case", "parse_case", "parse_override", "SECTIONS", "DESCRIPTIVE_KEYS", "without_descriptive_keys"]

log = logging.getLogger(__name__)

# Section name -> dataclass (``system`` is typed by its name, see ``parse_system``).
SECTIONS: dict[str, type] = {
    "case": CaseInfo,
    "time": TimeConfig,
    "initial_condition": InitialConditionConfig,
    "compute": ComputeConfig,
    "output": OutputConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "rollout": RolloutConfig,
    "evaluate": EvaluateConfig,
    "hybrid": HybridConfig,
}


#: the tables that hold values (``[quick]`` holds overrides of them)
VALUE_SECTIONS = ("system", *SECTIONS)

#: ``(section, key)`` added after checksums of cases were first stored (in outputs, closure files and
#: checkpoints): left out of checksums and ``changed_keys`` while at their default, so what was made
#: before a key existed still matches a case that does not set it
ADDED_KEYS: tuple[tuple[str, str], ...] = (("training", "jacobian_penalty_iterations"), ("evaluate", "error_scale"))
#: ``(section, key)`` that only describe the files a run writes (CF's descriptive attributes): in no
#: checksum and no list of changes, so giving or changing them remakes nothing (a file made before,
#: reused or resumed keeps its own)
DESCRIPTIVE_KEYS: tuple[tuple[str, str], ...] = tuple(("output", key) for key in OutputConfig.DESCRIPTIVE)


def without_descriptive_keys(mapping: dict[str, Any]) -> dict[str, Any]:
    """``mapping`` (a case's sections, as ``CaseConfig.to_mapping`` gives them) less ``DESCRIPTIVE_KEYS``."""
    for section, key in DESCRIPTIVE_KEYS:
        mapping.get(section, {}).pop(key, None)
    return mapping


def resolved_penalty_field(setup: str, field: str) -> str:
    """``training.jacobian_penalty_field`` resolved for a ``hybrid.setup``: ``"auto"`` is ``"closure"``
    where the host runs known physics (residual), ``"rhs"`` otherwise (see hybridnde.training.jacobian_terms)."""
    if field == "auto":
        return "closure" if setup == "residual" else "rhs"
    return field


def _penalty_field_as_before(training: dict[str, Any], setup: str, *, absent: str | None = None) -> None:
    """``training.jacobian_penalty_field`` (added 2026-11-27) in a section mapping, as checksums and
    change lists see it: the field the penalty acts on, resolved (``"auto"`` alone says nothing of it),
    or no key where no penalty is set. ``absent``: the value a mapping without the key had -- every
    penalty acted on the whole right-hand side before the key existed."""
    field = training.pop("jacobian_penalty_field", absent)
    if field is not None and training.get("jacobian_penalty", "none") != "none":
        training["jacobian_penalty_field"] = resolved_penalty_field(setup, field)


def _default(section: str, key: str) -> Any:
    return next(f.default for f in dataclasses.fields(SECTIONS[section]) if f.name == key)


@dataclass(frozen=True)
class CaseConfig:
    """One experiment: the true system, its sampling, and how to learn and test a closure for it."""

    system: SystemConfig
    case: CaseInfo = CaseInfo()
    time: TimeConfig = TimeConfig()
    initial_condition: InitialConditionConfig = InitialConditionConfig()
    compute: ComputeConfig = ComputeConfig()
    output: OutputConfig = OutputConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    rollout: RolloutConfig = RolloutConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    hybrid: HybridConfig = HybridConfig()
    #: dotted overrides applied by ``--quick`` (kept so the file round-trips)
    quick: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_mapping(self) -> dict[str, Any]:
        out = {name: to_mapping(getattr(self, name)) for name in ("case", "system", *list(SECTIONS)[1:])}
        if self.quick:
            out["quick"] = dict(self.quick)
        return out

    def to_toml(self) -> str:
        """The full configuration, defaults filled in, as TOML text (stored in every output file)."""
        return tomli_w.dumps(self.to_mapping())

    def checksum(self, sections: Iterable[str] | None = None) -> str:
        """SHA-256 of the canonical TOML of ``sections`` (all by default): equal configs, equal sums."""
        mapping = self.identity_mapping()
        for section, key in ADDED_KEYS:
            if mapping[section].get(key) == _default(section, key):
                del mapping[section][key]
        # outputs made before the key existed penalised the whole right-hand side ("rhs"): they match
        # exactly the cases whose penalty still acts on it
        _penalty_field_as_before(mapping["training"], self.hybrid.setup)
        if mapping["training"].get("jacobian_penalty_field") == "rhs":
            del mapping["training"]["jacobian_penalty_field"]
        if sections is not None:
            mapping = {name: mapping[name] for name in sections}
        return hashlib.sha256(tomli_w.dumps(mapping).encode()).hexdigest()

    def identity_mapping(self) -> dict[str, Any]:
        """``to_mapping`` as checksums see it: no descriptive keys, no ``[quick]``, and a mark where an
        earlier hybridnde computed this case otherwise (``changed_numerics``), so that what it made is not
        reused or resumed; every other case keeps the checksums its outputs recorded."""
        mapping = without_descriptive_keys(self.to_mapping())
        mapping.pop("quick", None)
        if self.changed_numerics():
            mapping["system"]["dealiasing_cut"] = "strict"
        return mapping

    def changed_numerics(self) -> list[str]:
        """What an earlier hybridnde computed otherwise for this very case, in words (``[]``: nothing):
        its outputs' checksums differ from this case's though no key does."""
        system = self.system
        if isinstance(system, KuramotoSivashinskyConfig) and system.strict_cut_moved():
            mode = round(system.dealiasing_fraction * (system.n_points // 2))
            return [f"the spectral step's 2/3 cut (strict since 2026-11-28: mode {mode} of N = {system.n_points} "
                    "took an aliased term before and is no longer kept)"]
        return []

    def changed_keys(self, before: str | None, sections: Iterable[str], *,
                     skip: Iterable[tuple[str, str]] = ()) -> list[str]:
        """``section.key (old -> new)`` for each key of ``sections`` whose value differs from the case
        TOML text ``before`` (e.g. the one an output or checkpoint was started with); ``[]`` when
        ``before`` is missing or unreadable. ``skip``: ``(section, key)`` pairs left out."""
        if not before:
            return []
        try:
            old = tomllib.loads(before)
        except tomllib.TOMLDecodeError:
            return []
        new, skip = tomllib.loads(self.to_toml()), {*skip, *DESCRIPTIVE_KEYS}
        changed = []
        for section in sections:
            was, now = dict(old.get(section, {})), dict(new.get(section, {}))
            for added_section, key in ADDED_KEYS:  # absent before the key existed: its default then
                if added_section == section and key not in was:
                    was[key] = _default(section, key)
            if section == "training":
                _penalty_field_as_before(was, old.get("hybrid", {}).get("setup", "residual"), absent="rhs")
                _penalty_field_as_before(now, new.get("hybrid", {}).get("setup", "residual"))
            for key in sorted(set(was) | set(now)):
                if (section, key) not in skip and was.get(key) != now.get(key):
                    changed.append(f"{section}.{key} ({was.get(key, 'unset')!r} -> {now.get(key, 'unset')!r})")
        return changed

    @property
    def host_system(self) -> SystemConfig:
        """The system the host solver runs: ``[system]`` with ``[hybrid.system]`` overrides."""
        return parse_system({**to_mapping(self.system), **dict(self.hybrid.system)}, "hybrid.system")

    @property
    def host_steps_etdrk4(self) -> bool:
        """Whether the host is the spectral Kuramoto-Sivashinsky solver (ETDRK4 steps; every other host
        is explicit: RK4 or Euler)."""
        host = self.host_system
        return (self.hybrid.setup == "residual" and isinstance(host, KuramotoSivashinskyConfig)
                and host.method == "spectral")

    @property
    def host_time(self) -> TimeConfig:
        """The host solver's stepping: ``hybrid.substeps`` steps per data sample."""
        integrator = self.hybrid.integrator
        if integrator == "auto":  # the truth's where it fits the host; adaptive truth: fixed RK4 steps
            if self.host_steps_etdrk4:
                integrator = "etdrk4"
            elif self.hybrid.setup != "neural_ode" and self.time.integrator in ("rk4", "euler"):
                integrator = self.time.integrator
            else:
                integrator = "rk4"
        return dataclasses.replace(self.time, dt=self.time.sample_interval / self.hybrid.substeps,
                                   save_every=1, spinup_steps=0, integrator=integrator)

    def replace(self, **sections: Any) -> "CaseConfig":
        return dataclasses.replace(self, **sections)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"training.epochs=20"`` -> ``(["training", "epochs"], 20)``; values are TOML literals, else strings."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: write section.key=value, e.g. --set training.epochs=20")
    key, raw = text.split("=", 1)
    path = [part.strip() for part in key.strip().split(".")]
    if len(path) < 2 or not all(path):
        raise ConfigError(f"--set {text!r}: the key needs a section, e.g. time.dt=0.1")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError as error:
        if raw.strip()[:1] in ("[", "{", '"', "'"):  # meant as a list, table or string, not as a bare word
            raise ConfigError(f"--set {text!r}: the value is not valid TOML ({error}); close its brackets and "
                              "quotes, e.g. --set 'initial_condition.value=[1.0, 2.0, 3.0]'") from None
        value = raw.strip()
    return path, value


def _unknown_key_origin(message: str, given: Mapping[str, str], source: str) -> str:
    """``message``, when it is of an unknown key, prefixed by where the key was written: the ``--set`` or
    ``[quick]`` entry that ``given`` maps it to, else the case ``source``."""
    if not message.startswith("unknown key "):
        return message
    key = message[len("unknown key "):].split(";")[0].split(" ")[0]
    return f"{given.get(key, source)}: {message}"


def _apply(raw: dict[str, Any], path: list[str], value: Any, origin: str) -> None:
    if path[0] not in VALUE_SECTIONS:  # named here: the section check after would blame the case file
        close = difflib.get_close_matches(path[0], VALUE_SECTIONS, n=1)
        raise ConfigError(f"{origin}: unknown section [{path[0]}]"
                          + (f"; did you mean {'.'.join([close[0], *path[1:]])}?" if close else
                             f" (known sections: {', '.join(sorted(VALUE_SECTIONS))})"))
    table = raw
    for part in path[:-1]:
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{origin}: {'.'.join(path)} goes through a value that is not a table")
    table[path[-1]] = value


def parse_case(raw: Mapping[str, Any], *, overrides: Iterable[str] = (), quick: bool = False,
               source: str = "case", check_quick: bool = True) -> CaseConfig:
    """Validate a case mapping (as read from TOML) into a ``CaseConfig``.

    ``quick`` applies the case's ``[quick]`` table of dotted overrides; ``overrides`` are
    ``section.key=value`` strings applied last. Raises ``ConfigError`` naming the field.
    ``check_quick``: also check the ``[quick]`` variant (with the same overrides) when it is not applied;
    not for a case stored in a file, whose overrides were applied without it.
    """
    given, raw = raw, copy.deepcopy(dict(raw))
    quick_table = raw.pop("quick", {})
    if not isinstance(quick_table, Mapping):
        raise ConfigError(f"{source}: [quick] must be a table of dotted keys, e.g. \"training.epochs\" = 10")
    overrides = [(text, *parse_override(text)) for text in overrides]
    unquick = copy.deepcopy(raw) if check_quick and not quick and quick_table else None
    if quick and not quick_table:
        log.warning("%s has no [quick] table: --quick changes only the default output folder (<name>-quick)", source)
    if quick:
        for dotted, value in quick_table.items():
            _apply(raw, dotted.split("."), value, f"{source} [quick] {dotted}")
    for text, path, value in overrides:
        _apply(raw, path, value, f"--set {text}")

    try:
        sections, system = _typed_sections(raw, source)  # the case as given first: its errors are its own
    except ConfigError as error:  # an unknown key: said where it was written
        given = {".".join(path): f"--set {text}" for text, path, _ in overrides}
        if quick:
            given = {**{dotted: f"{source} [quick] {dotted}" for dotted in quick_table}, **given}
        message = _unknown_key_origin(str(error), given, source)
        if "system.name" in given and str(error).startswith("unknown key system."):  # (the file's key, another system)
            message += (f"; {given['system.name']} chose another system, which has no such key: start from a case "
                        "file of that system instead")
        raise ConfigError(message) from None
    if unquick is not None:  # a typo in [quick] must not wait for the first --quick run
        for dotted, value in quick_table.items():
            _apply(unquick, dotted.split("."), value, f"{source} [quick] {dotted}")
        for text, path, value in overrides:
            _apply(unquick, path, value, f"--set {text}")
        try:  # each key's own rules only: those joining keys bind the variant that runs (a --set may
              # conflict with the quick variant, e.g. rollout.save_every above its rollout.steps)
            _typed_sections(unquick, f"{source} [quick]", validate=False)
        except ConfigError as error:
            text = str(error)
            raise ConfigError(text if text.startswith(source) else f"{source} [quick]: {text}") from None
    if sections["time"].integrator == "auto":
        spectral = isinstance(system, KuramotoSivashinskyConfig) and system.method == "spectral"
        sections["time"] = dataclasses.replace(sections["time"], integrator="etdrk4" if spectral else "rk4")
    if sections["initial_condition"].distribution == "auto":
        default = {"kuramoto_sivashinsky": "random_fourier", "two_body": "two_body_orbit",
                   "rigid_body": "rigid_body_circle"}.get(system.name)
        if default is None:
            raise ConfigError(f"initial_condition.distribution: {system.name} has no default; choose 'point', "
                              "'gaussian', 'uniform_box' or 'file' and give its parameters")
        sections["initial_condition"] = dataclasses.replace(sections["initial_condition"], distribution=default)
    if sections["model"].kind == "auto":
        kind = "periodic_cnn" if isinstance(system, KuramotoSivashinskyConfig) else "mlp"
        sections["model"] = dataclasses.replace(sections["model"], kind=kind)
    case = CaseConfig(system=system, quick=dict(quick_table), **sections)
    check_consistency(case)
    if overrides or quick:
        warn_stale_lyapunov_exponent(given, case, source, [*(".".join(path) for _, path, _ in overrides),
                                                           *(quick_table if quick else ())])
    return case


def _typed_sections(raw: Mapping[str, Any], source: str, *,
                    validate: bool = True) -> tuple[dict[str, Any], SystemConfig]:
    """Each section of ``raw`` as its dataclass (unknown sections and keys, types and ranges checked;
    ``validate``: also each section's rules joining several keys)."""
    known = {"quick", *VALUE_SECTIONS}
    for name in raw:
        if name not in known:
            raise ConfigError(f"{source}: unknown section [{name}] (known sections: {', '.join(sorted(known))})")
        if not isinstance(raw[name], Mapping):
            raise ConfigError(f"{source}: [{name}] must be a table")
    if "system" not in raw:
        raise ConfigError(f"{source}: missing [system] table with a name, e.g. name = \"lorenz63\"")
    sections = {name: from_mapping(cls, raw.get(name, {}), name, validate=validate) for name, cls in SECTIONS.items()}
    return sections, parse_system(raw["system"], validate=validate)


def parse_case_text(text: str, *, source: str = "case") -> CaseConfig:
    """A case from TOML text, e.g. the ``case_toml`` a file or closure stores; ``ConfigError`` if unreadable."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML ({error})") from None
    return parse_case(raw, source=source, check_quick=False)


def read_case_file(path: Path, *, example: str = "cases/lorenz63.toml") -> dict[str, Any]:
    """The TOML table of a case file; ``ConfigError`` naming the file and the fix (``example``: a case
    file of its kind) when it is missing, a folder, not UTF-8 text, or not TOML."""
    if path.is_dir():
        raise ConfigError(f"case file {str(path)!r} is a folder; pass a TOML file such as {example}")
    if not path.is_file():
        raise ConfigError(f"case file {str(path)!r} does not exist; pass a path such as {example}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))  # (a byte-order mark, as some editors write)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (TOML files are UTF-8); give a case file such as {example}") from None
    except OSError as error:
        raise ConfigError(f"case file {str(path)!r} cannot be read ({error.strerror or error}); check its "
                          "permissions") from None


def load_case(path: str | Path, *, overrides: Iterable[str] = (), quick: bool = False) -> CaseConfig:
    """Read and validate a case file; errors name the file and the field."""
    path = Path(path)
    raw = read_case_file(path)
    raw.setdefault("case", {}).setdefault("name", path.stem)
    return parse_case(raw, overrides=overrides, quick=quick, source=str(path))
