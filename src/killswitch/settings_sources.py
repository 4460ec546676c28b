"""Merge the settings sources, overlaying per-account variables on the TOML accounts list.

The environment and `$CREDENTIALS_DIRECTORY` address one account as
`accounts__<venue>__<name>__<field>`; the TOML file holds `accounts` as a list. `AccountOverlay`
merges the sources by priority and lays each `<venue>.<name>` map on the matching list entry, so
keys never need to sit in the TOML file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsError


class AccountOverlay(PydanticBaseSettingsSource):
    """Merge sources by priority, overlaying `accounts.<venue>.<name>` maps on the list."""

    def __init__(
        self, settings_cls: type[BaseSettings], sources: Sequence[PydanticBaseSettingsSource]
    ) -> None:
        super().__init__(settings_cls)
        self.sources = list(sources)  # highest priority first

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for source in reversed(self.sources):
            data = dict(source())
            overlay = data.pop("accounts", None)
            merged = _deep_update(merged, data)
            if isinstance(overlay, Mapping):
                merged["accounts"] = _overlay_accounts(merged.get("accounts"), overlay)
            elif overlay is not None:
                merged["accounts"] = overlay
        return merged


def _deep_update(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _deep_update(result[key], value)
        else:
            result[key] = value
    return result


def _overlay_accounts(accounts: object, overlay: Mapping[str, Any]) -> list[Any]:
    if not isinstance(accounts, list):
        raise SettingsError(
            "accounts: per-account variables or credentials need the account in the config file"
        )
    result: list[Any] = [dict(a) if isinstance(a, Mapping) else a for a in accounts]
    for venue, by_name in overlay.items():
        if not isinstance(by_name, Mapping):
            raise SettingsError(f"accounts__{venue}: expected accounts__{venue}__<name>__<field>")
        for name, fields in by_name.items():
            target = next(
                (
                    a
                    for a in result
                    if isinstance(a, dict)
                    and str(a.get("venue", "")).lower() == venue.lower()
                    and str(a.get("name", "")).casefold() == name.casefold()
                ),
                None,
            )
            if target is None:
                raise SettingsError(f"accounts__{venue}__{name}: no such account in the config")
            if not isinstance(fields, Mapping):
                raise SettingsError(f"accounts__{venue}__{name}: expected __<field> after the name")
            target.update(fields)
    return result
