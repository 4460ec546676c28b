"""Find, load and check the configuration.

Which file (`config_path`), which `KILLSWITCH_*` variables name no setting, and every problem as
one line naming its field (`ConfigError`); the models and their sources are `killswitch.settings`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from killswitch.model import VENUES
from killswitch.settings import ENV_PREFIX, ITEM_ERRORS, AccountSettings, Settings

DEFAULT_CONFIG_PATH = Path("/etc/killswitch/killswitch.toml")
CONFIG_ENV = "KILLSWITCH_CONFIG"
# Variables under this prefix belong to the test suite (e.g. KILLSWITCH_TEST_KAFKA), not the daemon.
TEST_ENV_PREFIX = "KILLSWITCH_TEST_"


class ConfigError(Exception):
    """The configuration is invalid; `errors` holds one line per problem, naming the field."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = list(errors)


def config_path(explicit: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Return the config file to read: `--config`, else `$KILLSWITCH_CONFIG`, else the default."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return explicit
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_CONFIG_PATH


def unknown_env_vars(environ: Mapping[str, str] | None = None) -> list[str]:
    """Return the `KILLSWITCH_*` variables that name no setting."""
    env = os.environ if environ is None else environ
    unknown = []
    for var in sorted(env):
        upper = var.upper()
        if not upper.startswith(ENV_PREFIX) or upper == CONFIG_ENV:
            continue
        if upper.startswith(TEST_ENV_PREFIX):
            continue
        if not _names_a_setting(upper[len(ENV_PREFIX) :].lower().split("__")):
            unknown.append(var)
    return unknown


def _names_a_setting(path: list[str]) -> bool:
    head, *rest = path
    field = Settings.model_fields.get(head)
    if field is None:
        return False
    if head == "accounts":
        # KILLSWITCH_ACCOUNTS (a JSON list) or KILLSWITCH_ACCOUNTS__<venue>__<name>__<field>
        return not rest or (
            len(rest) == 3 and rest[0] in VENUES and rest[2] in AccountSettings.model_fields
        )
    model = field.annotation
    for name in rest:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False
        sub = model.model_fields.get(name)
        if sub is None:
            return False
        model = sub.annotation
    return True


def load_settings(
    path: Path | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Load, merge and validate the configuration; raise `ConfigError` naming each bad field.

    `environ` defaults to the process environment; the environment sources of pydantic-settings
    always read `os.environ`, so a different mapping only changes which file and credentials
    directory are used and which variables are checked.
    """
    env = os.environ if environ is None else environ
    explicit = path is not None or bool(env.get(CONFIG_ENV))
    file = config_path(path, env)
    errors = [f"{var}: unknown setting (no such field)" for var in unknown_env_vars(env)]
    if explicit and not file.is_file():
        errors.append(f"config: no such file {file}")
    if errors:
        raise ConfigError(errors)
    credentials_dir = env.get("CREDENTIALS_DIRECTORY") or None
    toml_file = file if file.is_file() else None
    try:
        return Settings.from_sources(toml_file, credentials_dir)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except (SettingsError, ValueError, OSError) as exc:
        # TOML syntax errors and unreadable credential directories land here.
        raise ConfigError([f"config: {exc}"]) from None


def describe_validation_error(exc: ValidationError) -> list[str]:
    """Return one line per error, `dotted.field: message`, never echoing the input value."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False):
        loc = dotted_path(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if not loc:
            # Cross-field checks on the whole config name their field, one problem a line.
            lines.extend(msg.splitlines())
            continue
        if err["type"] == ITEM_ERRORS:
            lines.extend(f"{loc}[{i}]: {message}" for i, message in err["ctx"]["items"])
            continue
        if err["type"] == "missing":
            msg = "required, not set"
        elif err["type"] == "extra_forbidden":
            msg = "unknown setting (no such field)"
        lines.append(f"{loc}: {msg}")
    return lines


def dotted_path(loc: Sequence[int | str]) -> str:
    """`('venues', 'binance', 'accounts', 0)` -> `venues.binance.accounts[0]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
