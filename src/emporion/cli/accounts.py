"""``emporion orgs | members | credits | prices | margins``: the accounts side of the admin API,
from the command line, checked by the same schemas."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated

import typer
from rich.table import Table

from emporion.api.admin import schemas
from emporion.cli.options import (
    ConfigFile,
    DataDir,
    books,
    catalog,
    date,
    err,
    fail,
    find_org,
    load,
    out,
    usd,
    validated,
    with_db,
)  # fmt: skip
from emporion.core.money import to_nanos
from emporion.core.prices import Margin, Price
from emporion.errors import EmporionError
from emporion.metering import credits as credit
from emporion.metering.ledger import Ledger
from emporion.metering.pricebook import PriceBook
from emporion.settings import Settings
from emporion.store import orgs, repos
from emporion.store.session import Database
from emporion.store.tables import Organization

orgs_app = typer.Typer(help="Organizations and sub-organizations (a reseller's customers).", no_args_is_help=True)
members_app = typer.Typer(help="Members of an organization.", no_args_is_help=True)
credits_app = typer.Typer(help="Prepaid credit: top-ups, grants, refunds, balances.", no_args_is_help=True)
prices_app = typer.Typer(help="Versioned model prices (USD per token).", no_args_is_help=True)
margins_app = typer.Typer(help="The operator's versioned margins.", no_args_is_help=True)


# --- organizations -------------------------------------------------------------------------------

OrgRef = Annotated[str, typer.Argument(help="Organization id or name.")]


def _change_org(settings: Settings, ref: str, change: Callable[[Organization], None]) -> Organization:
    async def work(session):
        org = await find_org(session, ref)
        change(org)
        return org

    return with_db(settings, work)


def _check_tier(settings: Settings, tier: str | None) -> None:
    if tier is not None and not settings.knows_tier(tier):
        fail(f"unknown tier {tier!r}; the tiers are {', '.join(settings.tier_names)}", 2)


@orgs_app.command("create")
def orgs_create(
    name: Annotated[str, typer.Argument(help="A name, unique among the parent's sub-organizations (or among top-level ones).")],
    parent: Annotated[str | None, typer.Option(help="The reseller (id or name) this organization buys through.")] = None,
    tier: Annotated[str | None, typer.Option(help="Set the tier by hand (pinned); default: the first tier, floating.")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Create an organization (a top-level one with the free credit); its id is printed on standard output."""
    settings = load(data_dir, config)
    spec = validated(schemas.CreateOrganization, name=name, tier=tier)
    _check_tier(settings, spec.tier)

    async def work(db: Database, ledger: Ledger) -> Organization:
        async with db.session() as session, session.begin():
            parent_id = None if parent is None else (await find_org(session, parent)).id
            if await orgs.org_named(session, spec.name, parent_id) is not None:  # names are unique within a parent
                fail(f"an organization named {spec.name!r} already exists " + ("at the top level" if parent is None else f"under {parent!r}"))
            org = await repos.create_org(session, spec.name, parent_id=parent_id, tier=spec.tier or next(iter(settings.tiers)))
            org.tier_pinned = spec.tier is not None
        await credit.welcome(ledger, settings, org.id, org.parent_id)
        return org

    org = books(settings, work)
    err.print(f"created organization '{org.name}' ({org.id}), tier {org.tier}")
    print(org.id)


@orgs_app.command("list")
def orgs_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Every organization, with its reseller, tier, state and balance."""
    settings = load(data_dir, config)

    async def work(session):
        found = await orgs.list_orgs(session)
        return found, [await orgs.balance_of(session, org.id) for org in found]

    found, balances = with_db(settings, work)
    names = {org.id: org.name for org in found}
    table = Table("id", "name", "reseller", "tier", "status", "balance", "available", "created")
    for org, balance in zip(found, balances, strict=True):
        tier = org.tier + (" (pinned)" if org.tier_pinned else "")
        status = "suspended" if org.suspended_at else "active"
        table.add_row(org.id, org.name, names.get(org.parent_id or "", "-"), tier, status, usd(balance.balance_nanos),
                      usd(balance.available_nanos), date(org.created_at))  # fmt: skip
    out.print(table)


@orgs_app.command("show")
def orgs_show(org: OrgRef, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """One organization in full."""
    settings = load(data_dir, config)

    async def work(session):
        found = await find_org(session, org)
        parent = None if found.parent_id is None else await session.get(Organization, found.parent_id)
        balance, keys = await orgs.balance_of(session, found.id), await orgs.count_keys(session, found.id)
        return found, parent, balance, keys, len(await orgs.members_of(session, found.id))

    found, parent, balance, keys, members = with_db(settings, work)
    limits = [found.requests_per_minute, found.tokens_per_minute, found.max_concurrent]
    rows = {
        "id": found.id, "name": found.name, "created": date(found.created_at),
        "reseller": f"{parent.name} ({parent.id})" if parent else "-",
        "tier": found.tier + (" (pinned)" if found.tier_pinned else ""),
        "status": f"suspended: {found.suspended_reason or 'by the operator'}" if found.suspended_at else "active",
        "balance": usd(balance.balance_nanos), "held": usd(balance.held_nanos), "available": usd(balance.available_nanos),
        "resale markup": f"{schemas.plain(found.resale_percent)}% + ${schemas.plain(found.resale_fixed)}",
        "limits (rpm/tpm/concurrent)": "/".join("tier" if v is None else str(v) for v in limits),
        "active keys": str(keys), "members": str(members),
    }  # fmt: skip
    for name, value in rows.items():
        print(f"{name}: {value}")


@orgs_app.command("suspend")
def orgs_suspend(
    org: OrgRef,
    reason: Annotated[str, typer.Option(help="Shown to the organization's callers.")] = "",
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Suspend an organization (and its sub-organizations): their keys get 403 account_suspended."""
    settings = load(data_dir, config)
    spec = validated(schemas.Suspend, reason=reason)

    def change(found: Organization) -> None:
        found.suspended_at = found.suspended_at or int(time.time())
        found.suspended_reason = spec.reason or None
        found.suspended_by_operator = True  # the CLI is the operator

    found = _change_org(settings, org, change)
    err.print(f"suspended '{found.name}' ({found.id}); running servers notice within {settings.server.auth_cache_s:g}s")


@orgs_app.command("restore")
def orgs_restore(org: OrgRef, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Lift a suspension."""
    settings = load(data_dir, config)

    def change(found: Organization) -> None:
        found.suspended_at, found.suspended_reason, found.suspended_by_operator = None, None, False

    found = _change_org(settings, org, change)
    err.print(f"restored '{found.name}' ({found.id})")


@orgs_app.command("set-tier")
def orgs_set_tier(
    org: OrgRef,
    tier: Annotated[str | None, typer.Argument(help="The tier (optional with --float).")] = None,
    pinned: Annotated[
        bool, typer.Option("--pinned/--float", help="Pinned: kept until set again; float: rises with paid spend and age.")
    ] = True,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Set an organization's tier by hand, or let it float again."""
    settings = load(data_dir, config)
    spec = validated(schemas.SetTier, tier=tier, pinned=pinned)
    _check_tier(settings, spec.tier)

    def change(found: Organization) -> None:
        found.tier = spec.tier or found.tier
        found.tier_pinned = spec.pinned

    found = _change_org(settings, org, change)

    async def refresh(db: Database, _ledger: Ledger) -> str:
        await credit.refresh_tiers(db, settings)
        async with db.session() as session:
            return (await find_org(session, found.id)).tier

    tier_now = found.tier if spec.pinned else books(settings, refresh)
    err.print(f"'{found.name}' is in tier {tier_now}" + (" (pinned)" if spec.pinned else " (floating)"))


@orgs_app.command("set-markup")
def orgs_set_markup(
    org: OrgRef,
    percent: Annotated[str, typer.Option(help="Percent the reseller adds for its sub-organizations.")] = "0",
    fixed: Annotated[str, typer.Option(help="USD it adds per request.")] = "0",
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Set a reseller's markup over what it pays, charged to its sub-organizations."""
    settings = load(data_dir, config)
    spec = validated(schemas.UpdateOrganization, resale_percent=percent, resale_fixed_usd=fixed)

    def change(found: Organization) -> None:
        found.resale_percent, found.resale_fixed = str(spec.resale_percent), str(spec.resale_fixed_usd)

    found = _change_org(settings, org, change)
    err.print(f"'{found.name}' marks up {schemas.plain(found.resale_percent)}% + ${schemas.plain(found.resale_fixed)} per request")


@orgs_app.command("set-limits")
def orgs_set_limits(
    org: OrgRef,
    requests_per_minute: Annotated[int | None, typer.Option(help="0: back to the tier's.")] = None,
    tokens_per_minute: Annotated[int | None, typer.Option(help="0: back to the tier's.")] = None,
    max_concurrent: Annotated[int | None, typer.Option(help="0: back to the tier's.")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Override the tier's rate limits for one organization."""
    settings = load(data_dir, config)
    given = {"requests_per_minute": requests_per_minute, "tokens_per_minute": tokens_per_minute, "max_concurrent": max_concurrent}
    validated(schemas.UpdateOrganization, **{name: value for name, value in given.items() if value})

    def change(found: Organization) -> None:
        for name, value in given.items():
            if value is not None:
                setattr(found, name, value or None)

    found = _change_org(settings, org, change)
    shown = "/".join("tier" if v is None else str(v) for v in (found.requests_per_minute, found.tokens_per_minute, found.max_concurrent))
    err.print(f"'{found.name}' limits (rpm/tpm/concurrent): {shown}")


# --- members -----------------------------------------------------------------------------------


@members_app.command("add")
def members_add(
    org: OrgRef,
    email: str,
    role: Annotated[str, typer.Option(help="owner, admin or member.")] = "member",
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Add a member; its id is printed on standard output."""
    settings = load(data_dir, config)
    spec = validated(schemas.AddMember, email=email, role=role)

    async def work(session):
        found = await find_org(session, org)
        return found, await orgs.add_member(session, found.id, spec.email, spec.role)

    found, member = with_db(settings, work)
    if member is None:
        fail(f"{spec.email} is already a member of '{found.name}'")
    err.print(f"added {member.email} to '{found.name}' as {member.role}")
    print(member.id)


@members_app.command("list")
def members_list(org: OrgRef, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """An organization's members."""
    settings = load(data_dir, config)

    async def work(session):
        return await orgs.members_of(session, (await find_org(session, org)).id)

    table = Table("id", "email", "role", "added")
    for member in with_db(settings, work):
        table.add_row(member.id, member.email, member.role, date(member.created_at))
    out.print(table)


@members_app.command("remove")
def members_remove(
    org: OrgRef, member: Annotated[str, typer.Argument(help="Member id or email.")], data_dir: DataDir = None, config: ConfigFile = None
) -> None:
    """Remove a member (never the last owner)."""
    settings = load(data_dir, config)

    async def work(session):
        found = await orgs.find_member(session, (await find_org(session, org)).id, member)
        if found is None:
            fail(f"no member {member!r} in that organization")
        if not await orgs.remove_member(session, found):
            fail("an organization keeps at least one owner")
        return found

    removed = with_db(settings, work)
    err.print(f"removed {removed.email}")


# --- credits -----------------------------------------------------------------------------------

Amount = Annotated[str, typer.Argument(help="USD, exact (for example 10 or 2.50).")]
Reference = Annotated[str | None, typer.Option(help="A payment id: the same reference credits once.")]


def _credit(settings: Settings, org: str, amount: str, reference: str | None, kind: str) -> None:
    spec = validated(schemas.AddCredit, amount_usd=amount, kind=kind, reference=reference)
    nanos = to_nanos(spec.amount_usd)

    async def work(db: Database, ledger: Ledger):
        async with db.session() as session:
            found = await find_org(session, org)
        if kind == "transfer" and found.parent_id is None:
            fail(f"'{found.name}' has no reseller to transfer credit from")
        try:  # a reference used before for another amount: refused, with what it was used for
            applied = await credit.add_credit(ledger, spec.kind, found.id, nanos, spec.reference, source_org=found.parent_id)
        except EmporionError as exc:
            fail(exc.message)
        await credit.refresh_tiers(db, settings)
        async with db.session() as session:
            return found, applied, await orgs.balance_of(session, found.id), (await find_org(session, found.id)).tier

    found, applied, balance, tier = books(settings, work)
    if not applied:
        fail(f"reference {spec.reference!r} was credited before; nothing changed")
    what = {"top_up": "topped up", "grant": "granted", "transfer": "transferred"}[kind]
    err.print(f"{what} {usd(nanos)} to '{found.name}': balance {usd(balance.balance_nanos)}, tier {tier}")


@credits_app.command("top-up")
def credits_top_up(org: OrgRef, amount: Amount, reference: Reference = None, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Credit bought (counts toward tiers)."""
    _credit(load(data_dir, config), org, amount, reference, "top_up")


@credits_app.command("grant")
def credits_grant(org: OrgRef, amount: Amount, reference: Reference = None, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Free credit given (does not count toward tiers)."""
    _credit(load(data_dir, config), org, amount, reference, "grant")


@credits_app.command("transfer")
def credits_transfer(org: OrgRef, amount: Amount, reference: Reference = None, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Move credit from a sub-organization's reseller (its parent) to it, out of what the reseller has available."""
    _credit(load(data_dir, config), org, amount, reference, "transfer")


@credits_app.command("refund")
def credits_refund(request_id: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Give a request's charge back (once)."""
    settings = load(data_dir, config)

    async def work(db: Database, ledger: Ledger) -> int:
        async with db.session() as session:
            charged, refunded = await orgs.charge_state(session, request_id)
        if not charged:
            fail(f"no charged request with id {request_id!r}")
        if refunded:
            fail(f"{request_id} was refunded already")
        return await ledger.refund(request_id)

    err.print(f"refunded {usd(books(settings, work))} for {request_id}")


@credits_app.command("balance")
def credits_balance(org: OrgRef, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Balance, held (by requests running now) and available, in USD."""
    settings = load(data_dir, config)

    async def work(session):
        return await orgs.balance_of(session, (await find_org(session, org)).id)

    balance = with_db(settings, work)
    print(f"balance: {usd(balance.balance_nanos)}")
    print(f"held: {usd(balance.held_nanos)}")
    print(f"available: {usd(balance.available_nanos)}")


# --- prices and margins ------------------------------------------------------------------------


@prices_app.command("set")
def prices_set(
    model: str,
    prompt: Annotated[str, typer.Option(help="USD per input token.")],
    completion: Annotated[str, typer.Option(help="USD per output token.")],
    upstream: Annotated[str, typer.Option(help="Only on this deployment's upstream (default: the model's price).")] = "",
    cached_prompt: Annotated[str | None, typer.Option(help="USD per cached input token (default: the prompt price).")] = None,
    cache_write: Annotated[str | None, typer.Option(help="USD per cache-write token (default: the prompt price).")] = None,
    request: Annotated[str, typer.Option(help="USD per request.")] = "0",
    effective_at: Annotated[int | None, typer.Option(help="Unix time it applies from (default: now).")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """A new price version for a model; past requests keep the price they were charged."""
    settings = load(data_dir, config)
    spec = validated(
        schemas.SetPrice, model=model, upstream=upstream, prompt=prompt, completion=completion, cached_prompt=cached_prompt,
        cache_write=cache_write, request=request, effective_at=effective_at,
    )  # fmt: skip
    known = catalog(settings)
    if not known.has(spec.model):
        fail(f"unknown model {spec.model!r}", 2)
    upstreams = {deployment.upstream for deployment in known.get(spec.model).deployments}
    if spec.upstream and spec.upstream not in upstreams:
        fail(f"{spec.model} is not deployed on {spec.upstream!r} (it is on {', '.join(sorted(upstreams))})", 2)
    price = Price(spec.prompt, spec.completion, spec.cached_prompt, spec.cache_write, spec.request)
    row_id = books(settings, lambda db, _: PriceBook(db).set_price(spec.model, price, spec.upstream, spec.effective_at))
    err.print(f"price {row_id} for {spec.model}: ${spec.prompt} prompt, ${spec.completion} completion per token")


@prices_app.command("list")
def prices_list(
    model: Annotated[str | None, typer.Option(help="One model only.")] = None, data_dir: DataDir = None, config: ConfigFile = None
) -> None:
    """Every price version set with the CLI or the admin API (without one, the config's applies)."""
    settings = load(data_dir, config)
    table = Table("id", "model", "upstream", "prompt $/tok", "completion $/tok", "cached $/tok", "cache write $/tok", "request $", "from")
    for row in with_db(settings, lambda session: orgs.price_rows(session, model)):
        plain = schemas.plain
        table.add_row(str(row.id), row.model_id, row.upstream or "*", plain(row.prompt), plain(row.completion),
                      plain(row.cached_prompt) or "-", plain(row.cache_write) or "-", plain(row.request), date(row.effective_at))  # fmt: skip
    out.print(table)


@margins_app.command("set")
def margins_set(
    model: Annotated[str | None, typer.Option(help="One model (default: the global margin).")] = None,
    percent: Annotated[str, typer.Option(help="Percent over the provider's price.")] = "0",
    fixed: Annotated[str, typer.Option(help="USD per request.")] = "0",
    effective_at: Annotated[int | None, typer.Option(help="Unix time it applies from (default: now).")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """A new margin version, for one model or for all."""
    settings = load(data_dir, config)
    spec = validated(schemas.SetMargin, model=model, percent=percent, fixed_usd=fixed, effective_at=effective_at)
    if spec.model is not None and not catalog(settings).has(spec.model):
        fail(f"unknown model {spec.model!r}", 2)
    margin = Margin(spec.percent, spec.fixed_usd)
    row_id = books(settings, lambda db, _: PriceBook(db).set_margin(margin, spec.model or "", spec.effective_at))
    err.print(f"margin {row_id} for {spec.model or 'every model'}: {spec.percent}% + ${spec.fixed_usd} per request")


@margins_app.command("list")
def margins_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Every margin version."""
    settings = load(data_dir, config)
    table = Table("id", "model", "percent", "fixed $", "from")
    for row in with_db(settings, orgs.margin_rows):
        table.add_row(str(row.id), row.model_id or "*", schemas.plain(row.percent), schemas.plain(row.fixed), date(row.effective_at))
    out.print(table)
