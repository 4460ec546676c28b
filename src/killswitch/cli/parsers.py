"""A subcommand as data (`Command`), and the arguments the subcommands share."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from killswitch.config import ConfigError, load_settings
from killswitch.settings import Settings

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


@dataclass(frozen=True, slots=True)
class Command:
    """A subcommand: its name, what it runs, the arguments it adds and its `--help` texts.

    A command with a `description` prints it and its `epilog` (the exit codes) as written.
    """

    name: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    help: str
    description: str | None = None
    epilog: str | None = None

    def register(self, subparsers: Subparsers) -> None:
        """Add this command's parser to `subparsers`, set to run `run`."""
        parser = subparsers.add_parser(
            self.name,
            help=self.help,
            description=self.description,
            epilog=self.epilog,
            formatter_class=(
                argparse.RawDescriptionHelpFormatter if self.description else argparse.HelpFormatter
            ),
        )
        self.add_arguments(parser)
        parser.set_defaults(func=self.run)


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
