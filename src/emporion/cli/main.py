"""The ``emporion`` command: serve, keys, models, engine; the accounts commands live in cli/accounts.py,
the audit trail in cli/audit.py, the usage reports in cli/usage.py."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.logging import RichHandler
from rich.panel import Panel
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from emporion.accounts import rules, schemas
from emporion.accounts.audit import Actor
from emporion.accounts.service import Accounts
from emporion.auth.keys import NewKey
from emporion.catalog.builtin import GEMMA_ID, MINILM_ID
from emporion.catalog.models import Catalog
from emporion.cli.accounts import (
    credits_app,
    margins_app,
    members_app,
    orgs_app,
    presets_app,
    prices_app,
)
from emporion.cli.audit import audit_app
from emporion.cli.licenses import licenses_app
from emporion.cli.options import (
    ConfigFile,
    DataDir,
    catalog,
    date,
    err,
    fail,
    load,
    org_of,
    out,
    validated,
    with_accounts,
    with_db,
    worded,
)
from emporion.cli.requests import requests_app
from emporion.cli.usage import usage_app
from emporion.engine.build import build_llama_server, find_llama_server
from emporion.engine.gemma import ensure_gemma
from emporion.engine.gguf_info import read_gguf_info
from emporion.metering.ledger import Ledger
from emporion.metering.pricebook import PriceBook
from emporion.settings import Settings
from emporion.store import repos
from emporion.store.session import open_database
from emporion.store.tables import ApiKey, LocalModel

app = typer.Typer(help="Emporion: an OpenAI-compatible gateway and marketplace for AI models.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
models_app = typer.Typer(help="Models in the catalog.", no_args_is_help=True)
engine_app = typer.Typer(help="The local llama.cpp engine.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.add_typer(engine_app, name="engine")
app.add_typer(orgs_app, name="orgs")
app.add_typer(members_app, name="members")
app.add_typer(presets_app, name="presets")
app.add_typer(credits_app, name="credits")
app.add_typer(prices_app, name="prices")
app.add_typer(margins_app, name="margins")
app.add_typer(usage_app, name="usage")
app.add_typer(requests_app, name="requests")
app.add_typer(audit_app, name="audit")
app.add_typer(licenses_app, name="licenses")


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

    from emporion.app import StartupError, build_app, http_protocol

    settings = load(data_dir, config)
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
            http=http_protocol(settings),
            access_log=access_log,
            proxy_headers=access_log,  # X-Forwarded-For names the client only to the access log; without it, no work
            log_level="info",
            timeout_graceful_shutdown=10,
        )
    except StartupError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


async def _first_start(settings: Settings) -> None:
    """On an empty database: a default organization (with the free credit) and one API key, shown once."""
    db = await open_database(settings.database_url)
    ledger = Ledger(db)
    try:
        new = await Accounts(db, ledger, settings, PriceBook(db), Catalog([])).first_start()
    finally:
        await ledger.aclose()
        await db.close()
    if new is None:
        return
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
    org: Annotated[
        str, typer.Option(help="The organization the key belongs to (created, with its free credit, if new).")
    ] = "default",
    label: Annotated[str, typer.Option(help="A note to tell keys apart.")] = "",
    kind: Annotated[
        str, typer.Option(help="api (calls /v1), admin (manages its organization's tree), operator (everything).")
    ] = "api",
    budget: Annotated[str | None, typer.Option(help="What the key may spend over its life, in USD.")] = None,
    period: Annotated[str | None, typer.Option(help="day, week or month: the period of --period-budget.")] = None,
    period_budget: Annotated[str | None, typer.Option(help="What the key may spend per period, in USD.")] = None,
    models: Annotated[str | None, typer.Option(help="The models the key may use, comma-separated (default: all).")] = None,
    expires_in_days: Annotated[int | None, typer.Option(help="The key stops working after this many days.")] = None,
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Make an API key. It is printed once, on standard output; only its hash is kept."""
    settings = load(data_dir, config)
    allowed = None if models is None else [m.strip() for m in models.split(",") if m.strip()]
    spec = validated(
        schemas.CreateKey,
        label=label,
        kind=kind,
        budget_usd=budget,
        budget_period=period,
        period_budget_usd=period_budget,
        allowed_models=allowed,
        expires_in_days=expires_in_days,
    )
    known = None
    if spec.allowed_models:
        known = catalog(settings)
        unknown = [m for m in spec.allowed_models if not known.has(m)]
        with worded(model_not_found=(f"unknown model(s): {', '.join(unknown)}", 2)):
            rules.known_models(known, spec.allowed_models)

    async def work(accounts: Accounts, actor: Actor) -> tuple[NewKey, ApiKey]:
        found = await org_of(accounts, org, missing_ok=True)  # an existing one by id or name; else a new top-level one
        if found is None:
            return await accounts.create_key_with_org(actor, validated(schemas.CreateOrganization, name=org), spec)
        return await accounts.create_key(actor, found.id, spec)

    new, row = with_accounts(settings, work, known)
    err.print(f"created {row.kind} key {row.prefix}… ({row.id}) for organization '{org}'; it is shown only this once:")
    print(new.plaintext)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """List keys (prefixes only: keys themselves are never stored)."""
    rows = with_accounts(load(data_dir, config), lambda accounts, actor: accounts.all_keys(actor))
    table = Table("id", "key", "organization", "label", "created", "status")
    for key, org in rows:
        status = "revoked" if key.revoked_at else "active"
        table.add_row(key.id, f"{key.prefix}…", org.name, key.label, date(key.created_at), status)
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="Key id or prefix.")], data_dir: DataDir = None, config: ConfigFile = None
) -> None:
    """Revoke a key; requests with it fail with 401 within seconds."""

    async def work(accounts: Accounts, actor: Actor) -> ApiKey:
        matches = await accounts.active_keys(actor, key)
        if len(matches) != 1:
            fail(f"no single active key matches {key!r}")
        return await accounts.revoke_key(actor, matches[0].id)

    revoked = with_accounts(load(data_dir, config), work)
    err.print(f"revoked {revoked.prefix}… ({revoked.id})")


@models_app.command("list")
def models_list(data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """The catalog as `serve` would offer it."""
    settings = load(data_dir, config)
    table = Table("id", "kind", "context", "release", "license", "provider", "prompt $/tok", "completion $/tok")
    for model in catalog(settings):
        pricing = model.to_openai()["pricing"]
        table.add_row(
            model.id,
            model.kind,
            str(model.context_length),
            model.release,
            model.license,
            model.provider,
            pricing["prompt"],
            pricing["completion"],
        )
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
    settings = load(data_dir, config)
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

    if not with_db(settings, work):
        err.print(f"[red]error:[/red] a model named {name!r} already exists")
        raise typer.Exit(1)
    template = "its own chat template" if info.has_chat_template else "no chat template (llama.cpp's default applies)"
    err.print(f"added {name}: {info.architecture}, context {info.context_length}, {template}; restart `serve` to load it")


@models_app.command("remove")
def models_remove(name: str, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """Remove a model added with `models add` (the file itself is left alone)."""
    settings = load(data_dir, config)
    if not with_db(settings, lambda session: repos.remove_local_model(session, name)):
        err.print(f"[red]error:[/red] no added model named {name!r}")
        raise typer.Exit(1)
    err.print(f"removed {name}")


@engine_app.command("build")
def engine_build() -> None:
    """Build llama.cpp's llama-server from source (once; about 7 minutes on 2 cores)."""
    with err.status("building llama-server …"):
        path = build_llama_server(log=lambda line: err.print(line))
    err.print(f"llama-server ready: {path}")


if __name__ == "__main__":
    sys.exit(app())
