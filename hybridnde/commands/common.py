"""Arguments shared by the CLI verbs."""
from __future__ import annotations

import argparse

from ..config import CaseConfig, load_case

__all__ = ["add_case_arguments", "case_from_arguments"]


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("case", metavar="CASE.toml", help="case file (see cases/ and docs/case-reference.md)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a case value, e.g. --set training.epochs=20 (repeatable)")
    parser.add_argument("--quick", action="store_true", help="apply the case's [quick] overrides (a small, fast variant)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="never show progress bars (default: only on a terminal)")


def case_from_arguments(arguments: argparse.Namespace) -> CaseConfig:
    return load_case(arguments.case, overrides=arguments.overrides, quick=arguments.quick)
