"""The ``emporion`` command: serve, keys, organizations, members, credits, prices, models, engine."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.panel import Panel
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from emporion.api.admin import schemas
from emporion.api.body import invalid_request
from emporion.catalog.builtin import GEMMA_ID, MINILM_ID
from emporion.catalog.models import Catalog
from emporion.engine.build import build_llama_server, find_llama_server
from emporion.engine.gemma import ensure_gemma
from emporion.engine.gguf_info import read_gguf_info
from emporion.errors import EmporionError
from emporion.metering import credits as credit
from emporion.metering.ledger import Ledger
from emporion.metering.money import Nanos, format_usd, to_nanos
from emporion.metering.pricebook import PriceBook
from emporion.metering.prices import Margin, Price
from emporion.settings import ConfigError, Settings, load_settings
from emporion.store import orgs, repos
from emporion.store.session import Database, open_database
from emporion.store.tables import LocalModel, Organization

app = typer.Typer(help="Emporion: an OpenAI-compatible gateway and marketplace for AI models.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
models_app = typer.Typer(help="Models in the catalog.", no_args_is_help=True)
engine_app = typer.Typer(help="The local llama.cpp engine.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(engine_app, name="engine")
orgs_app = typer.Typer(help="Organizations and sub-organizations (a reseller's customers).", no_args_is_help=True)
members_app = typer.Typer(help="Members of an organization.", no_args_is_help=True)
credits_app = typer.Typer(help="Prepaid credit: top-ups, grants, refunds, balances.", no_args_is_help=True)
prices_app = typer.Typer(help="Versioned model prices (USD per token).", no_args_is_help=True)
margins_app = typer.Typer(help="The operator's versioned margins.", no_args_is_help=True)
app.add_typer(orgs_app, name="orgs")
app.add_typer(members_app, name="members")
app.add_typer(credits_app, name="credits")
app.add_typer(prices_app, name="prices")
app.add_typer(margins_app, name="margins")

err = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 200)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="EMPORION_DATA_DIR", help="Where the database and model files live."),
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", envvar="EMPORION_CONFIG", help="A TOML config file (default: DATA_DIR/config.toml).")
]


def _settings(data_dir: Path | None, config: Path | None) -> Settings:
    try:
        settings = load_settings(data_dir, config)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


async def _with_db(settings: Settings, work):
    db = await open_database(settings.database_url)
    try:
        async with db.session() as session, session.begin():
            return await work(session)
    finally:
        await db.close()


T = TypeVar("T")
Schema = TypeVar("Schema", bound=BaseModel)


def _books(settings: Settings, work: Callable[[Database, Ledger], Awaitable[T]]) -> T:
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


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _validated(schema: type[Schema], **fields: Any) -> Schema:
    """The options checked by the admin API's own body schema, so both refuse the same things."""
    try:
        return schema.model_validate({name: value for name, value in fields.items() if value is not None})
    except ValidationError as exc:
        _fail(invalid_request(exc).message, 2)
    except EmporionError as exc:
        _fail(exc.message, 2)


async def _org(session, ref: str) -> Organization:
    found = await orgs.find_org(session, ref)
    if found is None:
        _fail(f"no organization with id or name {ref!r}")
    return found


def _catalog(settings: Settings) -> Catalog:
    """The catalog as `serve` would build it (for commands that name models)."""
    from emporion.catalog.builtin import build_catalog
    from emporion.engine.gemma import gemma_path

    added = asyncio.run(_with_db(settings, repos.list_local_models))
    try:
        return build_catalog(settings, str(gemma_path(settings.models_dir)), added)
    except ValueError as exc:
        _fail(str(exc), 2)


def _usd(amount: int | None) -> str:
    return "-" if amount is None else f"${format_usd(Nanos(amount))}"


@app.command()
def serve(
    data_dir: DataDir = None,
    config: ConfigFile = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8080).")] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Start the gateway with the local models (no configuration needed)."""
    import uvicorn

    from emporion.app import StartupError, build_app

    settings = _settings(data_dir, config)
    server = settings.server.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    settings = settings.model_copy(update={"server": server})
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=err, show_path=False)])
    for noisy in ("httpx", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    err.print(f"Emporion · data in [bold]{settings.data_dir}[/bold]")
    asyncio.run(_first_start(settings))
    if settings.engine.enabled:
        _assemble_gemma(settings)
        if find_llama_server(settings.engine.llama_server) is None:
            err.print("[red]error:[/red] llama-server is not installed: run `emporion engine build` once (about 7 minutes).")
            raise typer.Exit(1)
    try:
        uvicorn.run(
            build_app(settings),
            host=settings.server.host,
            port=settings.server.port,
            loop="uvloop",
            http="httptools",
            access_log=access_log,
            log_level="info",
            timeout_graceful_shutdown=10,
        )
    except StartupError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


async def _first_start(settings: Settings) -> None:
    """On an empty database: a default organization (with the free credit) and one API key, shown once."""
    db: Database = await open_database(settings.database_url)
    ledger = Ledger(db)
    try:
        async with db.session() as session, session.begin():
            if await repos.count_organizations(session):
                return
            org = await repos.get_or_create_org(session, repos.DEFAULT_ORG)
            new, _ = await repos.create_key(session, org, label="first key")
        await credit.welcome(ledger, settings, org.id)
    finally:
        await ledger.aclose()
        await db.close()
    err.print(
        Panel(
            f"[bold]{new.plaintext}[/bold]\n\nThis is your API key for organization '{repos.DEFAULT_ORG}'. It is shown "
            "only once and stored only as a hash: keep it now. Make more with `emporion keys create --org NAME`.",
            title="Your API key",
            border_style="green",
        )
    )


def _assemble_gemma(settings: Settings) -> Path:
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=err, transient=True) as bar:
        task = bar.add_task(f"assembling {GEMMA_ID} (Q4_K_M GGUF)", total=None)
        path = ensure_gemma(settings.models_dir, lambda done, total: bar.update(task, completed=done, total=total))
    return path


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option(help="The organization the key belongs to (created, with its free credit, if new).")] = "default",
    label: Annotated[str, typer.Option(help="A note to tell keys apart.")] = "",
    kind: Annotated[str, typer.Option(help="api (calls /v1), admin (manages its organization's tree), operator (everything).")] = "api",
    budget: Annotated[str | None, typer.Option(help="What the key may spend over its life, in USD.")] = None,
    period: Annotated[str | None, typer.Option(help="day, week or month: the period of --period-budget.")] = None,
    period_budget: Annotated[str | None, typer.Option(help="What the key may spend per period, in USD.")] = None,
    models: Annotated[str | None, typer.Option(help="The models the key may use, comma-separated (default: all).")] = None,
    expires_in_days: Annotated[int | None, typer.Option(help="The key stops working after this many days.")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Make an API key. It is printed once, on standard output; only its hash is kept."""
    settings = _settings(data_dir, config)
    allowed = None if models is None else [m.strip() for m in models.split(",") if m.strip()]
    spec = _validated(
        schemas.CreateKey, label=label, kind=kind, budget_usd=budget, budget_period=period,
        period_budget_usd=period_budget, allowed_models=allowed, expires_in_days=expires_in_days,
    )  # fmt: skip
    if spec.allowed_models:
        catalog = _catalog(settings)
        unknown = [m for m in spec.allowed_models if not catalog.has(m)]
        if unknown:
            _fail(f"unknown model(s): {', '.join(unknown)}", 2)

    async def work(db: Database, ledger: Ledger):
        async with db.session() as session, session.begin():
            organization = await orgs.org_named(session, org)
            created = organization is None
            if organization is None:
                organization = await repos.create_org(session, org, tier=next(iter(settings.tiers)))
            new, row = await orgs.create_key(session, organization, spec.columns())
        if created:
            await credit.welcome(ledger, settings, organization.id)
        return new, row

    new, row = _books(settings, work)
    err.print(f"created {row.kind} key {row.prefix}… ({row.id}) for organization '{org}'; it is shown only this once:")
    print(new.plaintext)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """List keys (prefixes only: keys themselves are never stored)."""
    settings = _settings(data_dir, config)
    rows = asyncio.run(_with_db(settings, repos.list_keys))
    table = Table("id", "key", "organization", "label", "created", "status")
    for key, org in rows:
        status = "revoked" if key.revoked_at else "active"
        table.add_row(key.id, f"{key.prefix}…", org.name, key.label, _date(key.created_at), status)
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="Key id or prefix.")], data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Revoke a key; requests with it fail with 401 within seconds."""
    settings = _settings(data_dir, config)
    revoked = asyncio.run(_with_db(settings, lambda session: repos.revoke_key(session, key)))
    if revoked is None:
        err.print(f"[red]error:[/red] no single active key matches {key!r}")
        raise typer.Exit(1)
    err.print(f"revoked {revoked.prefix}… ({revoked.id})")


@models_app.command("list")
def models_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """The catalog as `serve` would offer it."""
    settings = _settings(data_dir, config)
    table = Table("id", "kind", "context", "release", "license", "provider", "prompt $/tok", "completion $/tok")
    for model in _catalog(settings):
        pricing = model.to_openai()["pricing"]
        table.add_row(model.id, model.kind, str(model.context_length), model.release, model.license, model.provider,
                      pricing["prompt"], pricing["completion"])
    out.print(table)


@models_app.command("add")
def models_add(
    path: Annotated[Path, typer.Argument(help="A GGUF file.", exists=True, dir_okay=False, resolve_path=True)],
    name: Annotated[str, typer.Option(help="The model id clients will use.")],
    display_name: Annotated[str | None, typer.Option(help="A human-readable name.")] = None,
    license: Annotated[str | None, typer.Option(help="License id (default: what the file says, else 'unknown').")] = None,
    release: Annotated[str, typer.Option(help="closed, open-weights or open-source.")] = "open-weights",
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Serve another GGUF file with the local engine (used by `serve` from its next start)."""
    if release not in ("closed", "open-weights", "open-source"):
        err.print("[red]error:[/red] --release is one of closed, open-weights, open-source")
        raise typer.Exit(2)
    if name in (GEMMA_ID, MINILM_ID):
        err.print(f"[red]error:[/red] {name} is a built-in model id")
        raise typer.Exit(2)
    settings = _settings(data_dir, config)
    try:
        info = read_gguf_info(path)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    row = LocalModel(
        id=name,
        name=display_name or info.name or name,
        path=str(path),
        context_length=info.context_length,
        has_chat_template=info.has_chat_template,
        architecture=info.architecture,
        license=license or info.license or "unknown",
        release=release,
        created_at=int(time.time()),
    )

    async def work(session):
        if await repos.get_local_model(session, name) is not None:
            return False
        await repos.add_local_model(session, row)
        return True

    if not asyncio.run(_with_db(settings, work)):
        err.print(f"[red]error:[/red] a model named {name!r} already exists")
        raise typer.Exit(1)
    template = "its own chat template" if info.has_chat_template else "no chat template (llama.cpp's default applies)"
    err.print(f"added {name}: {info.architecture}, context {info.context_length}, {template}; restart `serve` to load it")


@models_app.command("remove")
def models_remove(name: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Remove a model added with `models add` (the file itself is left alone)."""
    settings = _settings(data_dir, config)
    if not asyncio.run(_with_db(settings, lambda session: repos.remove_local_model(session, name))):
        err.print(f"[red]error:[/red] no added model named {name!r}")
        raise typer.Exit(1)
    err.print(f"removed {name}")


@engine_app.command("build")
def engine_build() -> None:
    """Build llama.cpp's llama-server from source (once; about 7 minutes on 2 cores)."""
    with err.status("building llama-server …"):
        path = build_llama_server(log=lambda line: err.print(line))
    err.print(f"llama-server ready: {path}")


# --- organizations -------------------------------------------------------------------------------

OrgRef = Annotated[str, typer.Argument(help="Organization id or name.")]


def _change_org(settings: Settings, ref: str, change: Callable[[Organization], None]) -> Organization:
    async def work(session):
        org = await _org(session, ref)
        change(org)
        return org

    return asyncio.run(_with_db(settings, work))


def _check_tier(settings: Settings, tier: str | None) -> None:
    if tier is not None and tier not in settings.tiers:
        _fail(f"unknown tier {tier!r}; the tiers are {', '.join(settings.tiers)}", 2)


@orgs_app.command("create")
def orgs_create(
    name: Annotated[str, typer.Argument(help="A unique name.")],
    parent: Annotated[str | None, typer.Option(help="The reseller (id or name) this organization buys through.")] = None,
    tier: Annotated[str | None, typer.Option(help="Set the tier by hand (pinned); default: the first tier, floating.")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Create an organization (with the free credit); its id is printed on standard output."""
    settings = _settings(data_dir, config)
    spec = _validated(schemas.CreateOrganization, name=name, tier=tier)
    _check_tier(settings, spec.tier)

    async def work(db: Database, ledger: Ledger) -> Organization:
        async with db.session() as session, session.begin():
            parent_id = None if parent is None else (await _org(session, parent)).id
            if await orgs.org_named(session, spec.name) is not None:
                _fail(f"an organization named {spec.name!r} already exists")
            org = await repos.create_org(session, spec.name, parent_id=parent_id, tier=spec.tier or next(iter(settings.tiers)))
            org.tier_pinned = spec.tier is not None
        await credit.welcome(ledger, settings, org.id)
        return org

    org = _books(settings, work)
    err.print(f"created organization '{org.name}' ({org.id}), tier {org.tier}")
    print(org.id)


@orgs_app.command("list")
def orgs_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Every organization, with its reseller, tier, state and balance."""
    settings = _settings(data_dir, config)

    async def work(session):
        found = await orgs.list_orgs(session)
        return found, [await orgs.balance_of(session, org.id) for org in found]

    found, balances = asyncio.run(_with_db(settings, work))
    names = {org.id: org.name for org in found}
    table = Table("id", "name", "reseller", "tier", "status", "balance", "available", "created")
    for org, balance in zip(found, balances, strict=True):
        tier = org.tier + (" (pinned)" if org.tier_pinned else "")
        status = "suspended" if org.suspended_at else "active"
        table.add_row(org.id, org.name, names.get(org.parent_id or "", "-"), tier, status, _usd(balance.balance_nanos),
                      _usd(balance.available_nanos), _date(org.created_at))  # fmt: skip
    out.print(table)


@orgs_app.command("show")
def orgs_show(org: OrgRef, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """One organization in full."""
    settings = _settings(data_dir, config)

    async def work(session):
        found = await _org(session, org)
        parent = None if found.parent_id is None else await session.get(Organization, found.parent_id)
        balance, keys = await orgs.balance_of(session, found.id), await orgs.count_keys(session, found.id)
        return found, parent, balance, keys, len(await orgs.members_of(session, found.id))

    found, parent, balance, keys, members = asyncio.run(_with_db(settings, work))
    limits = [found.requests_per_minute, found.tokens_per_minute, found.max_concurrent]
    rows = {
        "id": found.id, "name": found.name, "created": _date(found.created_at),
        "reseller": f"{parent.name} ({parent.id})" if parent else "-",
        "tier": found.tier + (" (pinned)" if found.tier_pinned else ""),
        "status": f"suspended: {found.suspended_reason or 'by the operator'}" if found.suspended_at else "active",
        "balance": _usd(balance.balance_nanos), "held": _usd(balance.held_nanos), "available": _usd(balance.available_nanos),
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
    settings = _settings(data_dir, config)
    spec = _validated(schemas.Suspend, reason=reason)

    def change(found: Organization) -> None:
        found.suspended_at = found.suspended_at or int(time.time())
        found.suspended_reason = spec.reason or None

    found = _change_org(settings, org, change)
    err.print(f"suspended '{found.name}' ({found.id}); running servers notice within {settings.server.auth_cache_s:g}s")


@orgs_app.command("restore")
def orgs_restore(org: OrgRef, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Lift a suspension."""
    settings = _settings(data_dir, config)

    def change(found: Organization) -> None:
        found.suspended_at, found.suspended_reason = None, None

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
    settings = _settings(data_dir, config)
    spec = _validated(schemas.SetTier, tier=tier, pinned=pinned)
    _check_tier(settings, spec.tier)

    def change(found: Organization) -> None:
        found.tier = spec.tier or found.tier
        found.tier_pinned = spec.pinned

    found = _change_org(settings, org, change)

    async def refresh(db: Database, _ledger: Ledger) -> str:
        await credit.refresh_tiers(db, settings)
        async with db.session() as session:
            return (await _org(session, found.id)).tier

    tier_now = found.tier if spec.pinned else _books(settings, refresh)
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
    settings = _settings(data_dir, config)
    spec = _validated(schemas.UpdateOrganization, resale_percent=percent, resale_fixed_usd=fixed)

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
    settings = _settings(data_dir, config)
    given = {"requests_per_minute": requests_per_minute, "tokens_per_minute": tokens_per_minute, "max_concurrent": max_concurrent}
    _validated(schemas.UpdateOrganization, **{name: value for name, value in given.items() if value})

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
    settings = _settings(data_dir, config)
    spec = _validated(schemas.AddMember, email=email, role=role)

    async def work(session):
        found = await _org(session, org)
        return found, await orgs.add_member(session, found.id, spec.email, spec.role)

    found, member = asyncio.run(_with_db(settings, work))
    if member is None:
        _fail(f"{spec.email} is already a member of '{found.name}'")
    err.print(f"added {member.email} to '{found.name}' as {member.role}")
    print(member.id)


@members_app.command("list")
def members_list(org: OrgRef, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """An organization's members."""
    settings = _settings(data_dir, config)

    async def work(session):
        return await orgs.members_of(session, (await _org(session, org)).id)

    table = Table("id", "email", "role", "added")
    for member in asyncio.run(_with_db(settings, work)):
        table.add_row(member.id, member.email, member.role, _date(member.created_at))
    out.print(table)


@members_app.command("remove")
def members_remove(
    org: OrgRef, member: Annotated[str, typer.Argument(help="Member id or email.")], data_dir: DataDir = None, config: ConfigFile = None
) -> None:
    """Remove a member (never the last owner)."""
    settings = _settings(data_dir, config)

    async def work(session):
        found = await orgs.find_member(session, (await _org(session, org)).id, member)
        if found is None:
            _fail(f"no member {member!r} in that organization")
        if not await orgs.remove_member(session, found):
            _fail("an organization keeps at least one owner")
        return found

    removed = asyncio.run(_with_db(settings, work))
    err.print(f"removed {removed.email}")


# --- credits -----------------------------------------------------------------------------------

Amount = Annotated[str, typer.Argument(help="USD, exact (for example 10 or 2.50).")]
Reference = Annotated[str | None, typer.Option(help="A payment id: the same reference credits once.")]


def _credit(settings: Settings, org: str, amount: str, reference: str | None, kind: str) -> None:
    spec = _validated(schemas.AddCredit, amount_usd=amount, kind=kind, reference=reference)
    nanos = to_nanos(spec.amount_usd)

    async def work(db: Database, ledger: Ledger):
        async with db.session() as session:
            found = await _org(session, org)
        applied = await (ledger.top_up if kind == "top_up" else ledger.grant)(found.id, nanos, spec.reference)
        await credit.refresh_tiers(db, settings)
        async with db.session() as session:
            return found, applied, await orgs.balance_of(session, found.id), (await _org(session, found.id)).tier

    found, applied, balance, tier = _books(settings, work)
    if not applied:
        _fail(f"reference {spec.reference!r} was credited before; nothing changed")
    what = "topped up" if kind == "top_up" else "granted"
    err.print(f"{what} {_usd(nanos)} to '{found.name}': balance {_usd(balance.balance_nanos)}, tier {tier}")


@credits_app.command("top-up")
def credits_top_up(org: OrgRef, amount: Amount, reference: Reference = None, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Credit bought (counts toward tiers)."""
    _credit(_settings(data_dir, config), org, amount, reference, "top_up")


@credits_app.command("grant")
def credits_grant(org: OrgRef, amount: Amount, reference: Reference = None, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Free credit given (does not count toward tiers)."""
    _credit(_settings(data_dir, config), org, amount, reference, "grant")


@credits_app.command("refund")
def credits_refund(request_id: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Give a request's charge back (once)."""
    settings = _settings(data_dir, config)

    async def work(db: Database, ledger: Ledger) -> int:
        async with db.session() as session:
            charged, refunded = await orgs.charge_state(session, request_id)
        if not charged:
            _fail(f"no charged request with id {request_id!r}")
        if refunded:
            _fail(f"{request_id} was refunded already")
        return await ledger.refund(request_id)

    err.print(f"refunded {_usd(_books(settings, work))} for {request_id}")


@credits_app.command("balance")
def credits_balance(org: OrgRef, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Balance, held (by requests running now) and available, in USD."""
    settings = _settings(data_dir, config)

    async def work(session):
        return await orgs.balance_of(session, (await _org(session, org)).id)

    balance = asyncio.run(_with_db(settings, work))
    print(f"balance: {_usd(balance.balance_nanos)}")
    print(f"held: {_usd(balance.held_nanos)}")
    print(f"available: {_usd(balance.available_nanos)}")


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
    settings = _settings(data_dir, config)
    spec = _validated(
        schemas.SetPrice, model=model, upstream=upstream, prompt=prompt, completion=completion, cached_prompt=cached_prompt,
        cache_write=cache_write, request=request, effective_at=effective_at,
    )  # fmt: skip
    catalog = _catalog(settings)
    if not catalog.has(spec.model):
        _fail(f"unknown model {spec.model!r}", 2)
    upstreams = {deployment.upstream for deployment in catalog.get(spec.model).deployments}
    if spec.upstream and spec.upstream not in upstreams:
        _fail(f"{spec.model} is not deployed on {spec.upstream!r} (it is on {', '.join(sorted(upstreams))})", 2)
    price = Price(spec.prompt, spec.completion, spec.cached_prompt, spec.cache_write, spec.request)
    row_id = _books(settings, lambda db, _: PriceBook(db).set_price(spec.model, price, spec.upstream, spec.effective_at))
    err.print(f"price {row_id} for {spec.model}: ${spec.prompt} prompt, ${spec.completion} completion per token")


@prices_app.command("list")
def prices_list(
    model: Annotated[str | None, typer.Option(help="One model only.")] = None, data_dir: DataDir = None, config: ConfigFile = None
) -> None:
    """Every price version set with the CLI or the admin API (without one, the config's applies)."""
    settings = _settings(data_dir, config)
    table = Table("id", "model", "upstream", "prompt $/tok", "completion $/tok", "cached $/tok", "cache write $/tok", "request $", "from")
    for row in asyncio.run(_with_db(settings, lambda session: orgs.price_rows(session, model))):
        plain = schemas.plain
        table.add_row(str(row.id), row.model_id, row.upstream or "*", plain(row.prompt), plain(row.completion),
                      plain(row.cached_prompt) or "-", plain(row.cache_write) or "-", plain(row.request), _date(row.effective_at))  # fmt: skip
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
    settings = _settings(data_dir, config)
    spec = _validated(schemas.SetMargin, model=model, percent=percent, fixed_usd=fixed, effective_at=effective_at)
    if spec.model is not None and not _catalog(settings).has(spec.model):
        _fail(f"unknown model {spec.model!r}", 2)
    margin = Margin(spec.percent, spec.fixed_usd)
    row_id = _books(settings, lambda db, _: PriceBook(db).set_margin(margin, spec.model or "", spec.effective_at))
    err.print(f"margin {row_id} for {spec.model or 'every model'}: {spec.percent}% + ${spec.fixed_usd} per request")


@margins_app.command("list")
def margins_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Every margin version."""
    settings = _settings(data_dir, config)
    table = Table("id", "model", "percent", "fixed $", "from")
    for row in asyncio.run(_with_db(settings, orgs.margin_rows)):
        table.add_row(str(row.id), row.model_id or "*", schemas.plain(row.percent), schemas.plain(row.fixed), _date(row.effective_at))
    out.print(table)


def _date(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))


# Last, so that emporion.cli.usage may import this module's options and helpers.
from emporion.cli.usage import usage_app

app.add_typer(usage_app, name="usage")


if __name__ == "__main__":
    sys.exit(app())
