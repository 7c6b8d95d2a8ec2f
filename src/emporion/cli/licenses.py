"""``emporion licenses accept | list``: license acceptances from the command line, as the operator
(recorded in the audit trail with the OS user that ran it)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from emporion.accounts import schemas
from emporion.accounts.audit import Actor
from emporion.accounts.service import Accounts
from emporion.cli.options import ConfigFile, DataDir, catalog, date, err, load, org_of, out, validated, with_accounts, worded

licenses_app = typer.Typer(
    help="Licenses an organization accepted (models with `license_acceptance = true`).", no_args_is_help=True
)

OrgRef = Annotated[str, typer.Argument(help="Organization id or name.")]


@licenses_app.command("accept")
def licenses_accept(
    org: OrgRef,
    model: Annotated[str, typer.Argument(help="The model whose license the organization accepts.")],
    data_dir: DataDir = None,
    config: ConfigFile = None,
) -> None:
    """Accept a model's license for an organization, on its behalf (the operator)."""
    settings = load(data_dir, config)
    spec = validated(schemas.AcceptLicense, model=model)
    known = catalog(settings)

    async def work(accounts: Accounts, actor: Actor):
        with worded(
            model_not_found=(f"unknown model {spec.model!r}", 2),
            license_acceptance_not_required=(f"{spec.model} does not require accepting its license", 2),
        ):
            return await accounts.accept_license(actor, (await org_of(accounts, org)).id, spec)

    row = with_accounts(settings, work, known)
    err.print(f"{org} accepted the license `{row.license}` of {row.model_id} ({row.accepted_by})")


@licenses_app.command("list")
def licenses_list(org: OrgRef, data_dir: DataDir = None, config: ConfigFile = None) -> None:
    """The licenses an organization accepted."""

    async def work(accounts: Accounts, actor: Actor):
        return await accounts.list_licenses(actor, (await org_of(accounts, org)).id)

    table = Table("model", "license", "accepted by", "accepted")
    for row in with_accounts(load(data_dir, config), work):
        table.add_row(row.model_id, row.license, row.accepted_by, date(row.accepted_at))
    out.print(table)
