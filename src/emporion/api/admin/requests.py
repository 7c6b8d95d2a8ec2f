"""``/admin/v1/requests``: the request log (observe/request_log.py), for the operator (every
organization) and an admin key (its own organization, or one in its reach named by ``org_id``);
one entry with its prompt and completion where the organization's retention policy kept them."""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emporion.accounts import schemas
from emporion.api.body import invalid_request, no_nul
from emporion.api.openai.routes import authenticate, json_response, list_page
from emporion.auth.scope import require_admin, visible_org
from emporion.errors import NotFound
from emporion.store import request_log as store

PREFIX = "/admin/v1/requests"


async def list_requests(request: Request) -> Response:
    deps, principal = await authenticate(request)
    require_admin(principal)
    query = {name: no_nul(value, name) for name, value in request.query_params.items()}
    try:
        spec = schemas.RequestLogQuery.model_validate(query)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    if spec.org_id is not None:
        org_ids: tuple[str, ...] | None = ((await visible_org(deps.db, principal, spec.org_id)).id,)
    else:
        org_ids = None if principal.key_kind == "operator" else (principal.org_id,)
    await _flushed(request)
    filters = store.Filters(
        org_ids=org_ids,
        key_id=spec.key_id,
        model=spec.model,
        status=spec.status,
        end_user=spec.user,
        since_ms=int(spec.since * 1000) if spec.since is not None else None,
        until_ms=int(spec.until * 1000) if spec.until is not None else None,
    )
    rows, more = await store.page(deps.request_log_db, filters, spec.limit, spec.after)
    return list_page([store.to_wire(row) for row in rows], more)


async def get_request(request: Request) -> Response:
    deps, principal = await authenticate(request)
    require_admin(principal)
    request_id = no_nul(request.path_params["request_id"], "request_id")
    await _flushed(request)
    found = await store.get(deps.request_log_db, request_id)
    missing = NotFound(f"No request with id `{request_id}` in reach.", param="request_id", code="request_not_found")
    if found is None:
        raise missing
    entry, body = found
    try:
        await visible_org(deps.db, principal, entry.org_id)
    except NotFound:
        raise missing from None
    return json_response(store.to_wire(entry, body))


async def _flushed(request: Request) -> None:
    """What this replica has logged is written before it is read (other replicas' within their flush_ms)."""
    request_log = getattr(request.app.state, "request_log", None)
    if request_log is not None:
        await request_log.flush()


routes = [
    Route(PREFIX, list_requests, methods=["GET"]),
    Route(PREFIX + "/{request_id}", get_request, methods=["GET"]),
]
