"""``emporion usage``: an organization's usage by day, model or key, and its monthly statement."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.table import Table

from emporion.cli.options import ConfigFile, DataDir, err, fail, find_org, load, out
from emporion.core.money import Nanos, format_usd
from emporion.errors import EmporionError
from emporion.metering import statements
from emporion.metering import usage as metering_usage
from emporion.settings import Settings
from emporion.store.session import Database, open_database
from emporion.store.tables import Organization

usage_app = typer.Typer(help="Usage reports and monthly statements.", no_args_is_help=True)

T = TypeVar("T")
OrgOption = Annotated[str, typer.Option("--org", help="Organization id or name.")]


def _run(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Runs ``work`` on the database; an EmporionError (a bad date, month or name) exits 2."""

    async def run() -> T:
        db = await open_database(settings.database_url)
        try:
            return await work(db)
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    except EmporionError as exc:
        fail(exc.message, 2)


async def _org(db: Database, ref: str) -> Organization:
    async with db.session() as session:
        return await find_org(session, ref)


@usage_app.command("show")
def show(
    org: OrgOption,
    by: Annotated[str, typer.Option("--by", help="day, model, key, user (end user) or tag.")] = "day",
    start: Annotated[str | None, typer.Option(help="First day, YYYY-MM-DD (UTC; default: 29 days before --end).")] = None,
    end: Annotated[str | None, typer.Option(help="Last day, YYYY-MM-DD (UTC; default: today).")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Requests, tokens and cost, summed by day, model, key, end user or tag."""
    if not metering_usage.is_group(by):
        fail(f"--by is one of {', '.join(metering_usage.GROUPS)}", 2)
    grouping = by
    settings = load(data_dir, config)

    async def work(db: Database):
        first, last = metering_usage.parse_range(start, end)
        found = await _org(db, org)
        rows, total = await metering_usage.report(db, found.id, *metering_usage.bounds(first, last), grouping)
        return found, first, last, rows, total

    found, first, last, rows, total = _run(settings, work)
    table = Table(
        by,
        "requests",
        "input",
        "cached input",
        "cache write",
        "output",
        "cost $",
        title=f"{found.name}: {first.isoformat()} to {last.isoformat()} (UTC)",
    )
    for row in rows:
        table.add_row(_name(row), *_counts(row))
    table.add_section()
    table.add_row("total", *_counts(total))
    out.print(table)


def _name(row: metering_usage.UsageRow) -> str:
    if row.key_prefix is None:
        return row.group
    return f"{row.group} ({row.key_prefix}{' ' + row.key_label if row.key_label else ''})"


def _counts(row: metering_usage.UsageRow) -> list[str]:
    counts = (row.requests, row.input_tokens, row.cached_input_tokens, row.cache_write_tokens, row.output_tokens)
    return [*map(str, counts), format_usd(Nanos(row.cost_nanos))]


@usage_app.command("statement")
def statement(
    org: OrgOption,
    month: Annotated[str, typer.Option(help="YYYY-MM (UTC).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The file to write.")],
    form: Annotated[str, typer.Option("--format", help="csv or pdf.")] = "csv",
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """An organization's monthly credit statement: opening balance, credits, charges per model,
    refunds, closing balance."""
    if form not in ("csv", "pdf"):
        fail("--format is csv or pdf", 2)
    settings = load(data_dir, config)

    async def work(db: Database) -> statements.Statement:
        return await statements.statement(db, (await _org(db, org)).id, month)

    done = _run(settings, work)
    if form == "csv":
        output.write_text(statements.to_csv(done), encoding="utf-8")
    else:
        output.write_bytes(statements.to_pdf(done))
    err.print(
        f"{done.org_name} {done.month}: opening ${statements.usd(done.opening_nanos)}, closing ${statements.usd(done.closing_nanos)}"
        f" -> {output}",
        highlight=False,
    )
