"""What every ``emporion`` command shares: the --data-dir and --config options, loading the
settings they name, opening the database (and the ledger), checking options with the admin API's
own schemas, and failing with a message on standard error."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncSession

from emporion.api.body import invalid_request
from emporion.catalog.models import Catalog
from emporion.core.money import Nanos, format_usd
from emporion.errors import EmporionError
from emporion.metering.ledger import Ledger
from emporion.settings import ConfigError, Settings, load_settings
from emporion.store import orgs, repos
from emporion.store.session import Database, open_database
from emporion.store.tables import Organization

err = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 200)

T = TypeVar("T")
Schema = TypeVar("Schema", bound=BaseModel)

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


def with_db(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Runs ``work`` in one database transaction."""

    async def run() -> T:
        db = await open_database(settings.database_url)
        try:
            async with db.session() as session, session.begin():
                return await work(session)
        finally:
            await db.close()

    return asyncio.run(run())


def books(settings: Settings, work: Callable[[Database, Ledger], Awaitable[T]]) -> T:
    """Runs ``work`` with the database and the ledger (for commands that move money)."""

    async def run() -> T:
        db = await open_database(settings.database_url)
        ledger = Ledger(db)
        try:
            return await work(db, ledger)
        finally:
            await ledger.aclose()
            await db.close()

    return asyncio.run(run())


def validated(schema: type[Schema], **fields: Any) -> Schema:
    """The options checked by the admin API's own body schema, so both refuse the same things."""
    try:
        return schema.model_validate({name: value for name, value in fields.items() if value is not None})
    except ValidationError as exc:
        fail(invalid_request(exc).message, 2)
    except EmporionError as exc:
        fail(exc.message, 2)


async def find_org(session: AsyncSession, ref: str, *, missing_ok: bool = False) -> Organization:
    """The organization with this id or name, or exit 1 (None with ``missing_ok``). A name is unique only within its parent:
    the top-level organization of that name is taken, else the one sub-organization of that name;
    when several share it (under different resellers), the message lists them to pick one by id."""
    try:
        found = await orgs.find_org(session, ref)
    except orgs.AmbiguousName as exc:
        parents = [await session.get(Organization, org.parent_id or "") for org in exc.matches]
        listed = ", ".join(f"{org.id} (under '{parent.name if parent else '?'}')" for org, parent in zip(exc.matches, parents, strict=True))
        fail(f"{len(exc.matches)} sub-organizations are named {ref!r} and no top-level one is: {listed}; name it by id")
    if found is None and not missing_ok:
        fail(f"no organization with id or name {ref!r}")
    return found  # type: ignore[return-value]


def catalog(settings: Settings) -> Catalog:
    """The catalog as `serve` would build it (for commands that name models)."""
    from emporion.catalog.builtin import build_catalog
    from emporion.engine.gemma import gemma_path

    added = with_db(settings, repos.list_local_models)
    try:
        return build_catalog(settings, str(gemma_path(settings.models_dir)), added)
    except ValueError as exc:
        fail(str(exc), 2)


def usd(amount: int | None) -> str:
    return "-" if amount is None else f"${format_usd(Nanos(amount))}"


def date(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))
