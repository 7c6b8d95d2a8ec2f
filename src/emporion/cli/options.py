"""What every ``emporion`` command shares: the --data-dir and --config options, loading the
settings they name, and failing with a message on standard error."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from emporion.settings import ConfigError, Settings, load_settings

err = Console(stderr=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="EMPORION_DATA_DIR", help="Where the database and model files live."),
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", envvar="EMPORION_CONFIG", help="A TOML config file (default: DATA_DIR/config.toml).")
]


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def load(data_dir: Path | None, config: Path | None) -> Settings:
    """The settings, or exit 2 saying what is wrong with the config."""
    try:
        settings = load_settings(data_dir, config)
    except ConfigError as exc:
        fail(str(exc), 2)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings
