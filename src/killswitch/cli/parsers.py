"""What every subcommand's `add_parser(subparsers)` receives, and the arguments they share."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from killswitch.settings import ConfigError, Settings, load_settings

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_command(
    subparsers: Subparsers,
    name: str,
    func: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str,
    epilog: str,
) -> argparse.ArgumentParser:
    """Register subcommand `name` running `func`, its epilog (the exit codes) printed as written."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def add_daemon_paths(parser: argparse.ArgumentParser, *, socket: bool = False) -> None:
    """Add `--config` (the daemon's config) and, with `socket`, `--socket` (its control socket)."""
    parser.add_argument("--config", type=Path, default=None, metavar="PATH", help="daemon config")
    if socket:
        parser.add_argument(
            "--socket", type=Path, default=None, metavar="PATH", help="control socket"
        )


def add_scope_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--venue`, `--account`, `--symbol` (each repeatable) and `--prefix`: a kill's scope."""
    parser.add_argument("--venue", action="append", default=[], help="repeatable; default all")
    parser.add_argument("--account", action="append", default=[], help="repeatable; default all")
    parser.add_argument("--symbol", action="append", default=[], help="repeatable; default all")
    parser.add_argument("--prefix", default=None, help="client order id prefix (strategy, desk)")


def load_or_report(path: Path | None) -> Settings | None:
    """Load the config at `path`; when it is invalid, write one line a problem to stderr."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        for line in exc.errors:
            sys.stderr.write(f"{line}\n")
        return None
