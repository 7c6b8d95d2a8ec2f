"""What every ``emporion`` command shares: the --data-dir and --config options, loading the
settings they name, opening the database (or the accounts service over it, acting as the
operator at the command line), checking options with the accounts service's own schemas, and
failing with a message on standard error."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncSession

from emporion.accounts.audit import Actor, at_cli
from emporion.accounts.service import Accounts
from emporion.catalog.models import Catalog
from emporion.core.money import Nanos, format_usd
from emporion.errors import EmporionError, invalid_request
from emporion.metering.ledger import Ledger
from emporion.metering.pricebook import PriceBook
from emporion.settings import ConfigError, Settings, load_settings
from emporion.store import orgs, repos
from emporion.store.session import open_database
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


def with_accounts(settings: Settings, work: Callable[[Accounts, Actor], Awaitable[T]], known: Catalog | None = None) -> T:
    """Runs ``work`` with the accounts service over the database, as the operator at the command
    line (``known``: the catalog, for commands that name models). A refusal of the service that
    ``work`` does not word itself exits 1 with the service's message."""

    async def run() -> T:
        db = await open_database(settings.database_url)
        ledger = Ledger(db)
        try:
            return await work(Accounts(db, ledger, settings, PriceBook(db), Catalog([]) if known is None else known), at_cli())
        finally:
            await ledger.aclose()
            await db.close()

    with worded():
        return asyncio.run(run())


@contextlib.contextmanager
def worded(**by_code: tuple[str, int]) -> Iterator[None]:
    """A refusal of the accounts service as this command words it: its error code -> (message, exit
    status); any other code, the service's own message and exit status 1."""
    try:
        yield
    except EmporionError as exc:
        message, status = by_code.get(exc.instance_code or exc.code or "", (exc.message, 1))
        fail(message, status)


def checked(schema: type[Schema], fields: dict[str, Any]) -> Schema:
    """``fields`` checked by the accounts service's own schema (a None is a field set to null), so
    the CLI and the API refuse the same things."""
    try:
        return schema.model_validate(fields)
    except ValidationError as exc:
        fail(invalid_request(exc).message, 2)
    except EmporionError as exc:
        fail(exc.message, 2)


def validated(schema: type[Schema], **fields: Any) -> Schema:
    """The options given (not None) checked by the accounts service's own schema."""
    return checked(schema, {name: value for name, value in fields.items() if value is not None})


async def find_org(session: AsyncSession, ref: str, *, missing_ok: bool = False) -> Organization:
    """The organization with this id or name, or exit 1 (None with ``missing_ok``). A name is unique only within its parent:
    the top-level organization of that name is taken, else the one sub-organization of that name;
    when several share it (under different resellers), the message lists them to pick one by id."""
    try:
        found = await orgs.find_org(session, ref)
    except orgs.AmbiguousName as exc:
        parents = [await session.get(Organization, org.parent_id or "") for org in exc.matches]
        listed = ", ".join(
            f"{org.id} (under '{parent.name if parent else '?'}')" for org, parent in zip(exc.matches, parents, strict=True)
        )
        fail(f"{len(exc.matches)} sub-organizations are named {ref!r} and no top-level one is: {listed}; name it by id")
    if found is None and not missing_ok:
        fail(f"no organization with id or name {ref!r}")
    return found  # type: ignore[return-value]


async def org_of(accounts: Accounts, ref: str, *, missing_ok: bool = False) -> Organization:
    """``find_org`` for a command running with the accounts service."""
    async with accounts.db.session() as session:
        return await find_org(session, ref, missing_ok=missing_ok)


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
