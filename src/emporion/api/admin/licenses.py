"""``/admin/v1/organizations/{org_id}/licenses``: an organization accepts the license of a model
whose terms require it (``license_acceptance``), and lists what it accepted. Accepting is the
organization's own act (an admin key of the organization itself, or the operator): the accounts
service says who may, and records each acceptance in the audit trail (``license.accept``)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emporion.accounts import schemas
from emporion.accounts.service import license_snapshot
from emporion.api.admin.routes import ORG, _admin, _body, _list, _org_id
from emporion.api.openai.routes import json_response
from emporion.store.tables import LicenseAcceptance


def license_object(row: LicenseAcceptance) -> dict[str, Any]:
    return {"object": "license_acceptance", **license_snapshot(row)}


async def accept_license(request: Request) -> Response:
    deps, accounts, actor = await _admin(request)
    org = await accounts.organization(actor, _org_id(request))
    body: schemas.AcceptLicense = await _body(request, deps, schemas.AcceptLicense)
    return json_response(license_object(await accounts.accept_license(actor, org.id, body)))


async def list_licenses(request: Request) -> Response:
    _, accounts, actor = await _admin(request)
    return _list([license_object(row) for row in await accounts.list_licenses(actor, _org_id(request))])


routes = [
    Route(ORG + "/licenses", accept_license, methods=["POST"]),
    Route(ORG + "/licenses", list_licenses, methods=["GET"]),
]
