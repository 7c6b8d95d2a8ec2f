"""``emporion requests list | show``: the request log, as the operator sees it (every organization)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.table import Table

from emporion.accounts import schemas
from emporion.cli.options import ConfigFile, DataDir, date, fail, find_org, load, out, validated
from emporion.core.money import Nanos, format_usd
from emporion.settings import Settings
from emporion.store import request_log as store
from emporion.store.session import Database, open_database

requests_app = typer.Typer(help="The request log: every call, refused ones included.", no_args_is_help=True)
T = TypeVar("T")


def _run(settings: Settings, work: Callable[[Database, Database], Awaitable[T]]) -> T:
    """Runs ``work`` with the database (organizations) and the request log's (its entries)."""

    async def run() -> T:
        db = await open_database(settings.database_url)
        log_db = db if settings.request_log_url == settings.database_url else await open_database(settings.request_log_url)
        try:
            return await work(db, log_db)
        finally:
            if log_db is not db:
                await log_db.close()
            await db.close()

    return asyncio.run(run())


@requests_app.command("list")
def requests_list(
    org: Annotated[str | None, typer.Option(help="Only this organization's (id or name).")] = None,
    model: Annotated[str | None, typer.Option(help="Only requests for this model.")] = None,
    status: Annotated[str | None, typer.Option(help="completed, partial, cancelled, failed or refused.")] = None,
    user: Annotated[str | None, typer.Option(help="Only this end user's.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """The newest requests, with their status, tokens, cost and latency."""
    settings = load(data_dir, config)
    spec = validated(schemas.RequestLogQuery, model=model, status=status, user=user, limit=limit)

    async def work(db: Database, log_db: Database):
        org_ids = None
        if org is not None:
            async with db.session() as session:
                org_ids = ((await find_org(session, org)).id,)
        filters = store.Filters(org_ids=org_ids, model=spec.model, status=spec.status, end_user=spec.user)
        return (await store.page(log_db, filters, spec.limit, None))[0]

    table = Table("id", "time", "org", "model", "status", "tokens in/out", "cost $", "ms", "ttft ms")
    for entry in _run(settings, work):
        table.add_row(
            entry.id,
            date(entry.created_at),
            entry.org_id,
            entry.served_model or entry.model,
            entry.status if entry.error_code is None else f"{entry.status} ({entry.error_code})",
            f"{entry.input_tokens}/{entry.output_tokens}",
            format_usd(Nanos(entry.cost_nanos)),
            str(entry.latency_ms),
            "" if entry.ttft_ms is None else str(entry.ttft_ms),
        )
    out.print(table)


@requests_app.command("show")
def requests_show(
    request_id: Annotated[str, typer.Argument(help="A request id (chatcmpl-…, resp_…, msg_…).")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """One request as JSON, with its prompt and completion where its organization keeps them."""
    settings = load(data_dir, config)
    found = _run(settings, lambda _, log_db: store.get(log_db, request_id))
    if found is None:
        fail(f"no request {request_id!r} in the log")
    print(json.dumps(store.to_wire(*found), indent=2))
