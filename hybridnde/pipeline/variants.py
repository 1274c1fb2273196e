"""What ``hybridnde run`` runs: one case, or one variant per combination of ``--compare`` values.

``--compare training.regularizer=none,jvp,fd`` makes three variants of the case that differ in that
key only (same seeds, same data). Several ``--compare`` options make their Cartesian product, e.g.
regularizers x ``training.seed=0,1,2``. Each stage of a variant writes into the run directory when
none of the compared keys lies in a section the stage depends on (so the variants share it: the
truth, the held-out reference), and into the variant's own folder otherwise.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..config import CaseConfig, ConfigError, load_case
from ..config.case import parse_override
from ..config.effect import effective_case, keys_without_effect

__all__ = ["Variant", "parse_compare", "build_variants", "split_values"]

log = logging.getLogger(__name__)
#: more variants than this are warned about (each one trains and rolls out in turn)
MANY_VARIANTS = 64


@dataclass(frozen=True)
class Variant:
    """One case of a run. ``settings``: the ``(dotted key, value)`` pairs of ``--compare`` that made
    it (empty for a plain run); ``label``: its folder name inside the run directory ("" = none)."""

    case: CaseConfig
    settings: tuple[tuple[str, Any], ...] = ()
    label: str = ""

    @property
    def compared_sections(self) -> set[str]:
        return {key.split(".", 1)[0] for key, _ in self.settings}

    def directory(self, root: Path, sections: Iterable[str] | None = None) -> Path:
        """Where a stage depending on ``sections`` writes (``None``: it always belongs to the variant)."""
        if not self.label:
            return root
        if sections is not None and not self.compared_sections & set(sections):
            return root
        return root / self.label

    def describe(self) -> str:
        return ", ".join(f"{key} = {_literal(value)}" for key, value in self.settings) or "the case as given"


def _literal(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def split_values(text: str) -> list[str]:
    """``"none,jvp,fd"`` -> ``["none", "jvp", "fd"]``; commas inside brackets or quotes do not split
    (``"[1, 2],[3, 4]"`` -> two arrays)."""
    values, depth, quote, current = [], 0, "", []
    for character in text:
        if quote:
            quote = "" if character == quote else quote
        elif character in "\"'":
            quote = character
        elif character in "[{":
            depth += 1
        elif character in "]}":
            depth -= 1
        elif character == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(character)
    values.append("".join(current).strip())
    return values


def parse_compare(text: str) -> tuple[str, list[tuple[str, Any]]]:
    """``"training.regularizer=none,jvp,fd"`` -> ``("training.regularizer", [(raw, value), ...])``
    with each value read as a TOML literal (else a string), as ``--set`` does."""
    if "=" not in text:
        raise ConfigError(f"--compare {text!r}: write section.key=value1,value2,..., e.g. "
                          "--compare training.regularizer=none,jvp,fd")
    key, raw = (part.strip() for part in text.split("=", 1))
    values = []
    for item in split_values(raw):
        if not item:
            raise ConfigError(f"--compare {text!r}: an empty value; separate values by single commas")
        path, value = parse_override(f"{key}={item}")
        values.append((item, value))
    key = ".".join(path)
    if len({repr(value) for _, value in values}) != len(values):
        raise ConfigError(f"--compare {text!r}: a value is repeated; give each value once")
    return key, values


def _folder_text(raw: str) -> str:
    text = raw.strip().strip("\"'")
    return "".join(c if c.isalnum() or c in "-+._" else "_" for c in text) or "_"


def build_variants(case_path: str | Path, *, quick: bool = False, overrides: Sequence[str] = (),
                   compare: Sequence[str] = ()) -> list[Variant]:
    """The validated case(s) of a run: ``ConfigError`` for any bad value of any variant, before any
    work starts. ``compare``: ``"key=v1,v2,..."`` strings; their product gives the variants."""
    if not compare:
        return [Variant(load_case(case_path, overrides=overrides, quick=quick))]
    sweeps = [parse_compare(text) for text in compare]
    keys = [key for key, _ in sweeps]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--compare: {sorted(k for k in keys if keys.count(k) > 1)[0]} is given twice; list all "
                          "its values in one --compare")
    overridden = {".".join(parse_override(text)[0]) for text in overrides}
    for key in keys:
        if key in overridden:
            raise ConfigError(f"--set and --compare both give {key}; drop the --set")
        if key.split(".", 1)[0] in ("case", "output"):
            raise ConfigError(f"--compare {key}: [case] and [output] do not change results; compare a key of another "
                              "section, e.g. training.regularizer")
    short = [key.rsplit(".", 1)[-1] for key in keys]
    names = [s if short.count(s) == 1 else key for s, key in zip(short, keys)]
    variants = []
    for combination in itertools.product(*(values for _, values in sweeps)):
        settings = tuple((key, value) for key, (_, value) in zip(keys, combination))
        extra = [f"{key}={raw}" for key, (raw, _) in zip(keys, combination)]
        label = "_".join(f"{name}={_folder_text(raw)}" for name, (raw, _) in zip(names, combination))
        try:
            case = load_case(case_path, overrides=[*overrides, *extra], quick=quick)
        except ConfigError as error:
            text = str(error)
            for given in extra:  # given by --compare, not by a --set the user never typed
                text = text.replace(f"--set {given}:", f"--compare {given}:")
            raise ConfigError(f"variant {label}: {text}") from None
        variants.append(Variant(case, settings, label))
    if len({v.label for v in variants}) != len(variants):
        raise ConfigError("--compare: two values give the same folder name; use values that differ in letters or "
                          "digits")
    variants = _distinct(variants)
    if len(variants) > MANY_VARIANTS:
        log.warning("--compare: %d variants, each trained and rolled out in turn; fewer values make a shorter run",
                    len(variants))
    return variants


def _distinct(variants: list[Variant]) -> list[Variant]:
    """The variants that differ in a key with an effect: values that read the same once typed (7 and 7.0
    for an integer key) or a key another one switches off (``config.effect``) make the same run, left
    out with a warning that says why."""
    seen: dict[str, Variant] = {}
    distinct = []
    for variant in variants:
        same = seen.setdefault(effective_case(variant.case).checksum(), variant)
        if same is variant:
            distinct.append(variant)
            continue
        switched_off = {**keys_without_effect(same.case), **keys_without_effect(variant.case)}
        differing = [key for key, value in variant.settings if value != dict(same.settings).get(key)]
        reasons = [f"{name} has no effect with {why}" for name, why in switched_off.items()
                   if any(name == key or name.startswith(f"{key}.") for key in differing)]
        log.warning("--compare: variant %s is the same run as %s (%s); it is left out", variant.label, same.label,
                    "; ".join(reasons) or "their values read the same")
    return distinct
