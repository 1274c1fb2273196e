"""Arguments shared by the CLI verbs."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..config import CaseConfig, ConfigError, load_case

__all__ = ["add_case_arguments", "case_from_arguments", "output_directory", "check_folder_name"]

#: how the verbs' help names their default folder
DEFAULT_FOLDER = "<output.directory or runs/<case>>[-quick]"


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case", metavar="CASE.toml", help="case file (see cases/ and docs/case-reference.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a case value, e.g. --set training.epochs=20 (repeatable)")
    parser.add_argument("--quick", action="store_true", help="apply the case's [quick] overrides (a small, fast variant)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="never show progress bars (default: only on a terminal)")


def case_from_arguments(arguments: argparse.Namespace) -> CaseConfig:
    return load_case(arguments.case, overrides=arguments.overrides, quick=arguments.quick)


def check_folder_name(name: str) -> None:
    """``ConfigError`` unless ``case.name`` can name the folder ``runs/<name>``: a path in it would write
    elsewhere ("../../escape"), nest folders ("a b/c") or none at all (""). Checked where it names a
    folder only: files written before the rule keep their stored cases readable."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name) or set(name) == {"."}:
        suggestion = re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("._") or "my_case"
        raise ConfigError(f"case.name = {name!r}: give a folder name of letters, digits, '_', '-' and '.', e.g. "
                          f"{suggestion!r} (it names the default output folder runs/<name>), or give --out or "
                          "output.directory")


def output_directory(case: CaseConfig, *, quick: bool) -> Path:
    """Where a verb writes when given no path: ``output.directory``, else ``runs/<case>``, with ``-quick``
    appended under ``--quick`` (a ``quick`` subfolder of ``.``, ``..`` or ``/``), so that a quick
    variant never overwrites the full run's files (the verbs one by one find each other's files
    there, as ``run`` does)."""
    if not case.output.directory:
        check_folder_name(case.case.name)
    directory = Path(case.output.directory or f"runs/{case.case.name}")
    if not quick:
        return directory
    if directory.name in ("", ".", ".."):  # ".", "..", "/": no name to extend, so a subfolder
        return directory / "quick"
    return directory.with_name(directory.name + "-quick")
