"""The `killswitch` command: the parser, `run` and `check-config`; the other subcommands come
from the modules beside this one.

To add a subcommand, declare it as a `Command` in a module of `killswitch.cli` (its name, a
function taking the parsed arguments and returning the exit code, a function adding its
arguments, its `--help` texts) and list it in `commands()`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from killswitch import __version__
from killswitch.cli import alert, control, demo, drill, preflight, sim
from killswitch.cli.parsers import Command, load_or_report
from killswitch.config import ConfigError, config_path, load_settings
from killswitch.daemon import EXIT_CONFIG
from killswitch.logs import setup_logging
from killswitch.settings import Settings
from killswitch.sim.cli import add_config_and_log_level

log = logging.getLogger(__name__)


def commands() -> list[Command]:
    """Return the subcommands, in help order."""
    return [
        RUN,
        CHECK_CONFIG,
        preflight.COMMAND,
        *control.COMMANDS,
        drill.COMMAND,
        alert.COMMAND,
        sim.COMMAND,
        demo.COMMAND,
    ]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--config` and `--log-level`, for subcommands that read the configuration."""
    add_config_and_log_level(
        parser,
        config_help=(
            "TOML config file (default: $KILLSWITCH_CONFIG, else /etc/killswitch/killswitch.toml)"
        ),
        log_level_help="override logging.level from the config",
        required=False,
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Load the configuration named by `--config`; raise `ConfigError` when it is invalid."""
    path: Path | None = getattr(args, "config", None)
    return load_settings(path)


def configure_logging(args: argparse.Namespace, settings: Settings | None = None) -> None:
    """Set up logging from `--log-level` and the config, redacting the config's secrets."""
    cli_level: str | None = getattr(args, "log_level", None)
    if settings is None:
        setup_logging(cli_level or "INFO", "auto")
        return
    setup_logging(
        cli_level or settings.logging.level,
        settings.logging.format,
        settings.secret_values(),
    )


# -- run ---------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    from killswitch import app

    configure_logging(args)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        return _refused(exc)
    configure_logging(args, settings)
    log.info(
        "killswitch starting version=%s config=%s accounts=%s",
        __version__,
        config_path(args.config),
        ",".join(a.label for a in settings.accounts),
    )
    try:
        return app.run(settings)
    except ConfigError as exc:  # its state_dir is another daemon's
        return _refused(exc)


def _refused(exc: ConfigError) -> int:
    for line in exc.errors:
        log.error("config error: %s", line)
    return EXIT_CONFIG


RUN = Command("run", _cmd_run, add_config_arguments, help="run the daemon (what systemd starts)")


# -- check-config ------------------------------------------------------------------------------


def _cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_or_report(args.config)
    if settings is None:
        return EXIT_CONFIG
    sys.stdout.write(f"# effective configuration from {config_path(args.config)}; secrets masked\n")
    sys.stdout.write(to_toml(settings.model_dump(mode="json")))
    return 0


CHECK_CONFIG = Command(
    "check-config",
    _cmd_check_config,
    add_config_arguments,
    help="validate the config and print it as TOML, secrets masked",
)


def to_toml(data: dict[str, Any]) -> str:
    """Render a JSON-like mapping as TOML; `None` values are left out (TOML has no null)."""
    lines: list[str] = []
    _toml_table(lines, [], data)
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_table(lines: list[str], path: list[str], table: dict[str, Any]) -> None:
    tables = []
    for key, value in table.items():
        if value is None:
            continue
        if isinstance(value, dict) or _is_table_array(value):
            tables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables:
        header = ".".join(_toml_key(k) for k in [*path, key])
        if isinstance(value, dict):
            lines.extend(["", f"[{header}]"])
            _toml_table(lines, [*path, key], value)
        else:
            for item in value:
                lines.extend(["", f"[[{header}]]"])
                _toml_table(lines, [*path, key], item)


def _is_table_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_string(text: str) -> str:
    # JSON escapes are valid TOML basic-string escapes; DEL is the one control JSON leaves raw.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        inner = ", ".join(
            f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None
        )
        return "{" + inner + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


# -- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Return the `killswitch` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="killswitch",
        description="Risk kill switch: cancel every open order on Binance, MEXC and BingX spot.",
    )
    parser.add_argument("--version", action="version", version=f"killswitch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands():
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `killswitch` command; return its exit code."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code
