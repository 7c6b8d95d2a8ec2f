"""``GET /v1/models/{id}/card``: a model's card (catalog/cards.py) at the caller's price, with
whether the caller's organization accepted its license. Any key may read it."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emporion.api.openai.routes import authenticate, json_response
from emporion.catalog.cards import card_object


async def get_card(request: Request) -> Response:
    deps, principal = await authenticate(request)
    model = deps.catalog.get(request.path_params["model_id"])
    price = deps.pricebook.list_price(model, [markup for _, markup in principal.resellers])
    accepted = (model.id, model.license) in principal.accepted_licenses
    local = {upstream.name for upstream in deps.settings.upstreams if upstream.local}
    return json_response(card_object(model, price, accepted, local))


# before ``/v1/models/{model_id:path}``, which would take ``x/card`` for a model named so
routes = [Route("/v1/models/{model_id:path}/card", get_card, methods=["GET"])]
