"""``emporion orgs | members | presets | credits | prices | margins``: the accounts service from the command
line, acting as the operator; options checked by the same schemas as the admin API's bodies."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from emporion.accounts import rules, schemas
from emporion.accounts.audit import Actor, preset_snapshot
from emporion.accounts.service import Accounts
from emporion.cli.options import (
    ConfigFile,
    DataDir,
    catalog,
    checked,
    date,
    err,
    fail,
    load,
    org_of,
    out,
    usd,
    validated,
    with_accounts,
    worded,
)
from emporion.settings import Settings
from emporion.store.tables import Organization

orgs_app = typer.Typer(help="Organizations and sub-organizations (a reseller's customers).", no_args_is_help=True)
members_app = typer.Typer(help="Members of an organization.", no_args_is_help=True)
credits_app = typer.Typer(help="Prepaid credit: top-ups, grants, refunds, balances.", no_args_is_help=True)
prices_app = typer.Typer(help="Versioned model prices (USD per token).", no_args_is_help=True)
margins_app = typer.Typer(help="The operator's versioned margins.", no_args_is_help=True)
presets_app = typer.Typer(help='Presets: named request settings, called as model "@preset/NAME".', no_args_is_help=True)


# --- organizations -------------------------------------------------------------------------------

OrgRef = Annotated[str, typer.Argument(help="Organization id or name.")]


def _known_tier(settings: Settings, tier: str | None) -> None:
    with worded(invalid_value=(f"unknown tier {tier!r}; the tiers are {', '.join(settings.tier_names)}", 2)):
        rules.known_tier(settings, tier)


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
    _known_tier(settings, spec.tier)

    async def work(accounts: Accounts, actor: Actor) -> Organization:
        parent_id = None if parent is None else (await org_of(accounts, parent)).id
        where = "at the top level" if parent is None else f"under {parent!r}"  # names are unique within a parent
        with worded(organization_exists=(f"an organization named {spec.name!r} already exists {where}", 1)):
            org, _ = await accounts.create_org(actor, spec.model_copy(update={"parent_id": parent_id}))
        return org

    org = with_accounts(settings, work)
    err.print(f"created organization '{org.name}' ({org.id}), tier {org.tier}")
    print(org.id)


@orgs_app.command("list")
def orgs_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Every organization, with its reseller, tier, state and balance."""
    found = with_accounts(load(data_dir, config), lambda accounts, actor: accounts.org_balances(actor))
    names = {org.id: org.name for org, _ in found}
    table = Table("id", "name", "reseller", "tier", "status", "balance", "available", "created")
    for org, balance in found:
        tier = org.tier + (" (pinned)" if org.tier_pinned else "")
        status = "suspended" if org.suspended_at else "active"
        table.add_row(
            org.id,
            org.name,
            names.get(org.parent_id or "", "-"),
            tier,
            status,
            usd(balance.balance_nanos),
            usd(balance.available_nanos),
            date(org.created_at),
        )
    out.print(table)


@orgs_app.command("show")
def orgs_show(org: OrgRef, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """One organization in full."""

    async def work(accounts: Accounts, actor: Actor):
        return await accounts.org_details(actor, (await org_of(accounts, org)).id)

    shown = with_accounts(load(data_dir, config), work)
    found, parent, balance = shown.org, shown.parent, shown.balance
    limits = [found.requests_per_minute, found.tokens_per_minute, found.max_concurrent]
    rows = {
        "id": found.id,
        "name": found.name,
        "created": date(found.created_at),
        "reseller": f"{parent.name} ({parent.id})" if parent else "-",
        "tier": found.tier + (" (pinned)" if found.tier_pinned else ""),
        "status": f"suspended: {found.suspended_reason or 'by the operator'}" if found.suspended_at else "active",
        "balance": usd(balance.balance_nanos),
        "held": usd(balance.held_nanos),
        "available": usd(balance.available_nanos),
        "resale markup": f"{schemas.plain(found.resale_percent)}% + ${schemas.plain(found.resale_fixed)}",
        "limits (rpm/tpm/concurrent)": "/".join("tier" if v is None else str(v) for v in limits),
        "active keys": str(shown.active_keys),
        "members": str(shown.members),
    }
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

    async def work(accounts: Accounts, actor: Actor) -> Organization:
        return await accounts.suspend_org(actor, (await org_of(accounts, org)).id, spec)

    found = with_accounts(settings, work)
    err.print(f"suspended '{found.name}' ({found.id}); running servers notice within {settings.server.auth_cache_s:g}s")


@orgs_app.command("restore")
def orgs_restore(org: OrgRef, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Lift a suspension."""

    async def work(accounts: Accounts, actor: Actor) -> Organization:
        return await accounts.restore_org(actor, (await org_of(accounts, org)).id)

    found = with_accounts(load(data_dir, config), work)
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
    _known_tier(settings, spec.tier)

    async def work(accounts: Accounts, actor: Actor) -> Organization:
        return await accounts.set_tier(actor, (await org_of(accounts, org)).id, spec)

    found = with_accounts(settings, work)
    err.print(f"'{found.name}' is in tier {found.tier}" + (" (pinned)" if spec.pinned else " (floating)"))


def _update(settings: Settings, org: str, spec: schemas.UpdateOrganization) -> Organization:
    async def work(accounts: Accounts, actor: Actor) -> Organization:
        return await accounts.update_org(actor, (await org_of(accounts, org)).id, spec)

    return with_accounts(settings, work)


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
    found = _update(settings, org, validated(schemas.UpdateOrganization, resale_percent=percent, resale_fixed_usd=fixed))
    err.print(
        f"'{found.name}' marks up {schemas.plain(found.resale_percent)}% + ${schemas.plain(found.resale_fixed)} per request"
    )


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
    fields = {name: value or None for name, value in given.items() if value is not None}  # 0: None, back to the tier's
    found = _update(settings, org, checked(schemas.UpdateOrganization, fields))
    shown = "/".join(
        "tier" if v is None else str(v) for v in (found.requests_per_minute, found.tokens_per_minute, found.max_concurrent)
    )
    err.print(f"'{found.name}' limits (rpm/tpm/concurrent): {shown}")


@orgs_app.command("set-retention")
def orgs_set_retention(
    org: OrgRef,
    days: Annotated[int, typer.Argument(help="Days the request log keeps prompt and completion bodies; 0: none.")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Set how long the request log keeps an organization's prompts and completions (0: not at all, the default)."""
    settings = load(data_dir, config)
    found = _update(settings, org, validated(schemas.UpdateOrganization, retention_days=days))
    kept = f"{found.retention_days} days" if found.retention_days else "not at all (zero data retention)"
    err.print(f"'{found.name}' request bodies are kept {kept}")


# --- presets -----------------------------------------------------------------------------------


@presets_app.command("set")
def presets_set(
    org: OrgRef,
    name: Annotated[str, typer.Argument(help="Lower-case letters, digits, '.', '_' or '-'.")],
    model: Annotated[str | None, typer.Option(help="The model the preset calls.")] = None,
    models: Annotated[str | None, typer.Option(help="Models to try in order, comma-separated.")] = None,
    system: Annotated[str | None, typer.Option(help="A system prompt put before the request's messages.")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="A parameter as NAME=JSON (temperature=0.2), again for more.")
    ] = None,
    provider: Annotated[str | None, typer.Option(help="Provider preferences, as a JSON object.")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Create a preset, or replace the organization's preset of that name; its id is printed."""
    settings = load(data_dir, config)
    parameters: dict[str, Any] = {}
    for given in param or []:
        key, sep, value = given.partition("=")
        if not sep or not key:
            fail(f"--param takes NAME=JSON, not {given!r}", 2)
        parameters[key] = _json(value, f"--param {key}")
    spec = validated(
        schemas.SetPreset,
        name=name,
        model=model,
        models=[m.strip() for m in models.split(",") if m.strip()] if models else None,
        system=system,
        parameters=parameters,
        provider=_json(provider, "--provider") if provider is not None else None,
    )

    async def work(accounts: Accounts, actor: Actor):
        return await accounts.set_preset(actor, (await org_of(accounts, org)).id, spec)

    preset = with_accounts(settings, work, catalog(settings))
    err.print(f"preset '{preset.name}': call it as model \"@preset/{preset.name}\"")
    print(preset.id)


def _json(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        fail(f"{option} is not JSON: {text!r}", 2)


@presets_app.command("list")
def presets_list(org: OrgRef, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """An organization's presets."""

    async def work(accounts: Accounts, actor: Actor):
        return await accounts.list_presets(actor, (await org_of(accounts, org)).id)

    table = Table("name", "model", "system", "parameters", "updated")
    for preset in with_accounts(load(data_dir, config), work):
        shown = json.loads(preset.config)
        table.add_row(
            preset.name,
            shown.get("model") or ", ".join(shown.get("models", [])),
            (shown.get("system") or "")[:40],
            json.dumps(shown.get("parameters", {})),
            date(preset.updated_at),
        )
    out.print(table)


@presets_app.command("show")
def presets_show(org: OrgRef, name: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """One preset, as JSON."""

    async def work(accounts: Accounts, actor: Actor):
        return await accounts.get_preset(actor, (await org_of(accounts, org)).id, name)

    print(json.dumps(preset_snapshot(with_accounts(load(data_dir, config), work)), indent=2))


@presets_app.command("delete")
def presets_delete(org: OrgRef, name: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Delete a preset."""

    async def work(accounts: Accounts, actor: Actor):
        return await accounts.delete_preset(actor, (await org_of(accounts, org)).id, name)

    gone = with_accounts(load(data_dir, config), work)
    err.print(f"deleted preset '{gone.name}'")


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

    async def work(accounts: Accounts, actor: Actor):
        found = await org_of(accounts, org)
        with worded(member_exists=(f"{spec.email} is already a member of '{found.name}'", 1)):
            return found, await accounts.add_member(actor, found.id, spec)

    found, member = with_accounts(settings, work)
    err.print(f"added {member.email} to '{found.name}' as {member.role}")
    print(member.id)


@members_app.command("list")
def members_list(org: OrgRef, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """An organization's members."""

    async def work(accounts: Accounts, actor: Actor):
        return await accounts.list_members(actor, (await org_of(accounts, org)).id)

    table = Table("id", "email", "role", "added")
    for member in with_accounts(load(data_dir, config), work):
        table.add_row(member.id, member.email, member.role, date(member.created_at))
    out.print(table)


@members_app.command("remove")
def members_remove(
    org: OrgRef,
    member: Annotated[str, typer.Argument(help="Member id or email.")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Remove a member (never the last owner)."""

    async def work(accounts: Accounts, actor: Actor):
        found = await org_of(accounts, org)
        chosen = await accounts.find_member(actor, found.id, member)
        if chosen is None:
            fail(f"no member {member!r} in that organization")
        with worded(last_owner=("an organization keeps at least one owner", 1)):
            return await accounts.remove_member(actor, found.id, chosen.id)

    removed = with_accounts(load(data_dir, config), work)
    err.print(f"removed {removed.email}")


# --- credits -----------------------------------------------------------------------------------

Amount = Annotated[str, typer.Argument(help="USD, exact (for example 10 or 2.50).")]
Reference = Annotated[str | None, typer.Option(help="A payment id: the same reference credits once.")]


def _credit(settings: Settings, org: str, amount: str, reference: str | None, kind: str) -> None:
    spec = validated(schemas.AddCredit, amount_usd=amount, kind=kind, reference=reference)

    async def work(accounts: Accounts, actor: Actor):
        found = await org_of(accounts, org)
        with worded(no_reseller=(f"'{found.name}' has no reseller to transfer credit from", 1)):
            return found, await accounts.add_credit(actor, found.id, spec)

    found, credited = with_accounts(settings, work)
    if not credited.applied:
        fail(f"reference {spec.reference!r} was credited before; nothing changed")
    what = {"top_up": "topped up", "grant": "granted", "transfer": "transferred"}[kind]
    balance = usd(credited.balance.balance_nanos)
    err.print(f"{what} {usd(credited.amount_nanos)} to '{found.name}': balance {balance}, tier {credited.tier}")


@credits_app.command("top-up")
def credits_top_up(
    org: OrgRef, amount: Amount, reference: Reference = None, data_dir: DataDir = None, config: ConfigFile = None
) -> None:
    """Credit bought (counts toward tiers)."""
    _credit(load(data_dir, config), org, amount, reference, "top_up")


@credits_app.command("grant")
def credits_grant(
    org: OrgRef, amount: Amount, reference: Reference = None, data_dir: DataDir = None, config: ConfigFile = None
) -> None:
    """Free credit given (does not count toward tiers)."""
    _credit(load(data_dir, config), org, amount, reference, "grant")


@credits_app.command("transfer")
def credits_transfer(
    org: OrgRef, amount: Amount, reference: Reference = None, data_dir: DataDir = None, config: ConfigFile = None
) -> None:
    """Move credit from a sub-organization's reseller (its parent) to it, out of what the reseller has available."""
    _credit(load(data_dir, config), org, amount, reference, "transfer")


@credits_app.command("refund")
def credits_refund(request_id: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Give a request's charge back (once)."""

    async def work(accounts: Accounts, actor: Actor) -> int:
        not_charged = (f"no charged request with id {request_id!r}", 1)
        with worded(generation_not_found=not_charged, already_refunded=(f"{request_id} was refunded already", 1)):
            return await accounts.refund(actor, request_id)

    err.print(f"refunded {usd(with_accounts(load(data_dir, config), work))} for {request_id}")


@credits_app.command("balance")
def credits_balance(org: OrgRef, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Balance, held (by requests running now) and available, in USD."""

    async def work(accounts: Accounts, actor: Actor):
        return await accounts.balance(actor, (await org_of(accounts, org)).id)

    balance = with_accounts(load(data_dir, config), work)
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
        schemas.SetPrice,
        model=model,
        upstream=upstream,
        prompt=prompt,
        completion=completion,
        cached_prompt=cached_prompt,
        cache_write=cache_write,
        request=request,
        effective_at=effective_at,
    )
    known = catalog(settings)
    upstreams = sorted({d.upstream for d in known.get(spec.model).deployments}) if known.has(spec.model) else []

    async def work(accounts: Accounts, actor: Actor):
        not_there = f"{spec.model} is not deployed on {spec.upstream!r} (it is on {', '.join(upstreams)})"
        with worded(model_not_found=(f"unknown model {spec.model!r}", 2), invalid_value=(not_there, 2)):
            return await accounts.set_price(actor, spec)

    row = with_accounts(settings, work, known)
    err.print(f"price {row.id} for {spec.model}: ${spec.prompt} prompt, ${spec.completion} completion per token")


@prices_app.command("list")
def prices_list(
    model: Annotated[str | None, typer.Option(help="One model only.")] = None, data_dir: DataDir = None, config: ConfigFile = None
) -> None:
    """Every price version set with the CLI or the admin API (without one, the config's applies)."""
    rows = with_accounts(load(data_dir, config), lambda accounts, actor: accounts.list_prices(actor, model))
    table = Table(
        "id", "model", "upstream", "prompt $/tok", "completion $/tok", "cached $/tok", "cache write $/tok", "request $", "from"
    )
    for row in rows:
        plain = schemas.plain
        table.add_row(
            str(row.id),
            row.model_id,
            row.upstream or "*",
            plain(row.prompt),
            plain(row.completion),
            plain(row.cached_prompt) or "-",
            plain(row.cache_write) or "-",
            plain(row.request),
            date(row.effective_at),
        )
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

    async def work(accounts: Accounts, actor: Actor):
        with worded(model_not_found=(f"unknown model {spec.model!r}", 2)):
            return await accounts.set_margin(actor, spec)

    row = with_accounts(settings, work, None if spec.model is None else catalog(settings))
    err.print(f"margin {row.id} for {spec.model or 'every model'}: {spec.percent}% + ${spec.fixed_usd} per request")


@margins_app.command("list")
def margins_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Every margin version."""
    table = Table("id", "model", "percent", "fixed $", "from")
    for row in with_accounts(load(data_dir, config), lambda accounts, actor: accounts.list_margins(actor)):
        table.add_row(
            str(row.id), row.model_id or "*", schemas.plain(row.percent), schemas.plain(row.fixed), date(row.effective_at)
        )
    out.print(table)
