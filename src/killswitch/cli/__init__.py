"""The `killswitch` command line: one module per group of subcommands (`cli.main` lists them)."""

from killswitch.cli.main import configure_logging, main, to_toml

__all__ = ["configure_logging", "main", "to_toml"]
