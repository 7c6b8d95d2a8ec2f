"""Usage and statements over HTTP: ``/v1/usage`` and ``/v1/statements/{month}`` for the calling
key's own organization (any kind of key, as OpenRouter's ``/credits`` and ``/generation``), and
the same under ``/admin/v1/organizations/{org_id}/...`` for admin keys over their tree.

API keys on the admin routes get 403 before any id is looked at; an organization outside an admin
key's reach is a 404 that repeats nothing of what was asked.
"""

from __future__ import annotations

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emporion.api.body import no_nul
from emporion.api.openai.routes import authenticate, json_response
from emporion.auth.scope import require_admin, visible_org
from emporion.core.money import format_usd
from emporion.errors import InvalidRequest, NotFound
from emporion.metering import statements
from emporion.metering import usage as metering_usage
from emporion.metering.usage import GROUPS, UsageRow
from emporion.store.session import Database

FORMATS = ("json", "csv", "pdf")


def _row(row: UsageRow) -> dict[str, object]:
    wire: dict[str, object] = {
        "group": row.group,
        "requests": row.requests,
        "input_tokens": row.input_tokens,
        "cached_input_tokens": row.cached_input_tokens,
        "cache_write_tokens": row.cache_write_tokens,
        "output_tokens": row.output_tokens,
        "cost_usd": format_usd(row.cost_nanos),
        "cost_nanos": row.cost_nanos,
    }
    if row.key_prefix is not None:
        wire |= {"key_prefix": row.key_prefix, "key_label": row.key_label}
    return wire


async def _report(db: Database, org_id: str, query: QueryParams) -> Response:
    for name, value in query.items():
        no_nul(value, name)
    group_by = query.get("group_by") or "day"
    if not metering_usage.is_group(group_by):
        raise InvalidRequest(f"`group_by` is one of {', '.join(GROUPS)}.", param="group_by")
    first, last = metering_usage.parse_range(query.get("start"), query.get("end"))
    key_id = query.get("key_id") or None
    end_user = query.get("user") or None
    rows, total = await metering_usage.report(db, org_id, *metering_usage.bounds(first, last), group_by, key_id, end_user)
    return json_response(
        {
            "object": "usage",
            "organization_id": org_id,
            "group_by": group_by,
            "start": first.isoformat(),
            "end": last.isoformat(),
            "key_id": key_id,
            "user": end_user,
            "data": [_row(row) for row in rows],
            "total": _row(total),
        }
    )


async def _statement(db: Database, org_id: str, request: Request) -> Response:
    form = request.query_params.get("format") or "json"
    if form not in FORMATS:
        raise InvalidRequest(f"`format` is one of {', '.join(FORMATS)}.", param="format")
    done = await statements.statement(db, org_id, no_nul(request.path_params["month"], "month"))
    filename = f"statement-{done.month}-{done.org_id}"
    if form == "csv":
        return Response(statements.to_csv(done), media_type="text/csv; charset=utf-8", headers=_attachment(filename + ".csv"))
    if form == "pdf":
        pdf = await statements.render_pdf(done)  # in a worker thread: the loop keeps serving meanwhile
        return Response(pdf, media_type="application/pdf", headers=_attachment(filename + ".pdf"))
    return json_response(statements.to_json(done))


def _attachment(filename: str) -> dict[str, str]:
    return {"content-disposition": f'attachment; filename="{filename}"'}


async def _reached(request: Request) -> tuple[Database, str]:
    """The database and the organization of an admin route, when in the key's reach."""
    deps, principal = await authenticate(request)
    require_admin(principal)
    try:
        org = await visible_org(deps.db, principal, no_nul(request.path_params["org_id"], "org_id"))
    except NotFound:
        raise NotFound("No such organization.", param="org_id", code="organization_not_found") from None
    await deps.ledger.flush()  # what this replica answered is in the books before they are read
    return deps.db, org.id


async def own_usage(request: Request) -> Response:
    deps, principal = await authenticate(request)
    await deps.ledger.flush()
    return await _report(deps.db, principal.org_id, request.query_params)


async def own_statement(request: Request) -> Response:
    deps, principal = await authenticate(request)
    await deps.ledger.flush()
    return await _statement(deps.db, principal.org_id, request)


async def org_usage(request: Request) -> Response:
    db, org_id = await _reached(request)
    return await _report(db, org_id, request.query_params)


async def org_statement(request: Request) -> Response:
    db, org_id = await _reached(request)
    return await _statement(db, org_id, request)


routes = [
    Route("/v1/usage", own_usage, methods=["GET"]),
    Route("/v1/statements/{month}", own_statement, methods=["GET"]),
    Route("/admin/v1/organizations/{org_id}/usage", org_usage, methods=["GET"]),
    Route("/admin/v1/organizations/{org_id}/statements/{month}", org_statement, methods=["GET"]),
]
