"""``emporion audit list``: the audit trail of accounts, newest first, as ``GET /admin/v1/audit``
gives it (the same filters and pages), in a table or as JSON."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from emporion.accounts import schemas
from emporion.accounts.audit import Actor
from emporion.accounts.service import Accounts, AuditPage
from emporion.cli.options import ConfigFile, DataDir, date, load, org_of, out, validated, with_accounts

audit_app = typer.Typer(
    help="The audit trail: every change to organizations, members, keys, credits and prices.", no_args_is_help=True
)


@audit_app.command("list")
def audit_list(
    org: Annotated[str | None, typer.Option(help="Only the events concerning this organization (id or name).")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action, for example key.revoke or credit.top_up.")] = None,
    object_id: Annotated[str | None, typer.Option("--object", help="Only the events of this object (an id).")] = None,
    since: Annotated[str | None, typer.Option(help="From this Unix time on (seconds).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this Unix time (seconds).")] = None,
    limit: Annotated[int, typer.Option(help=f"At most this many events (up to {schemas.MAX_AUDIT_PAGE}).")] = 50,
    after: Annotated[int | None, typer.Option(help="The page after the event with this id (the previous page's last).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The page as the admin API answers it.")] = False,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Events newest first; `--after LAST_ID` pages back."""
    settings = load(data_dir, config)
    spec = validated(schemas.AuditQuery, action=action, object_id=object_id, since=since, until=until, limit=limit, after=after)

    async def work(accounts: Accounts, actor: Actor) -> AuditPage:
        query = spec if org is None else spec.model_copy(update={"org_id": (await org_of(accounts, org)).id})
        return await accounts.audit(actor, query)

    page = with_accounts(settings, work)
    ids = [event["id"] for event in page.data]
    if as_json:
        print(
            json.dumps(
                {
                    "object": "list",
                    "data": page.data,
                    "first_id": ids[0] if ids else None,
                    "last_id": ids[-1] if ids else None,
                    "has_more": page.has_more,
                },
                indent=2,
            )
        )
        return
    table = Table("id", "at", "actor", "action", "object", "organization", "changed")
    for event in page.data:
        table.add_row(
            str(event["id"]),
            date(event["created_at"]),
            _actor(event["actor"]),
            event["action"],
            f"{event['object_type']} {event['object_id']}",
            event["org_id"] or "-",
            _changed(event),
        )
    out.print(table)
    if page.has_more:
        out.print(f"more: --after {ids[-1]}")


def _actor(actor: dict[str, Any]) -> str:
    if actor["kind"] == "key":
        return f"key {actor['key_id'] or '?'}"
    return actor["name"] or actor["kind"]


def _changed(event: dict[str, Any]) -> str:
    """What differs between before and after, in USD where money (or: created, removed)."""
    before, after = event["before"], event["after"]
    if before is None or after is None:
        return "created" if before is None else "removed"
    names = [
        name
        for name in sorted(before.keys() | after.keys())
        if before.get(name) != after.get(name) and not name.endswith("_nanos")
    ]
    return ", ".join(f"{name}: {_shown(before.get(name))} -> {_shown(after.get(name))}" for name in names)


def _shown(value: Any) -> str:
    return "-" if value is None else str(value)
