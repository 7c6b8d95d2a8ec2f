"""What the accounts service refuses beyond reach and kind of key (those are auth/scope.py's):
one rule each, so the admin API and the CLI cannot disagree."""

from __future__ import annotations

from emporion.auth.principal import Principal
from emporion.catalog.models import Catalog
from emporion.errors import InvalidRequest, NotFound, PermissionDenied
from emporion.settings import Settings
from emporion.store.tables import Organization


def not_own(principal: Principal, org: Organization, what: str) -> None:
    """A key never suspends (nor restores) the organization it belongs to: it would lock itself out."""
    if org.id == principal.org_id:
        raise PermissionDenied(f"A key cannot {what} its own organization.", code="own_organization")


def operators_suspension(principal: Principal, org: Organization) -> None:
    """A suspension the operator set is the operator's to change."""
    if org.suspended_at and org.suspended_by_operator and principal.key_kind != "operator":
        raise PermissionDenied(
            "The operator suspended this organization; only the operator can change that.", code="operator_key_required"
        )


def known_tier(settings: Settings, tier: str | None) -> None:
    if tier is not None and not settings.knows_tier(tier):
        names = ", ".join(settings.tier_names)
        raise InvalidRequest(f"Unknown tier `{tier}`; the tiers are {names}.", param="tier", code="invalid_value")


def known_models(catalog: Catalog, models: list[str] | None, param: str = "allowed_models") -> None:
    """A key's allowed models (a preset's models) exist (the first that does not is named)."""
    for model in models or []:
        if not catalog.has(model):
            raise NotFound(f"The model `{model}` does not exist.", param=param, code="model_not_found")


def deployed_on(catalog: Catalog, model_id: str, upstream: str) -> None:
    """A price for one deployment names an upstream the model is deployed on ("": every one)."""
    model = catalog.get(model_id)
    upstreams = {deployment.upstream for deployment in model.deployments}
    if upstream and upstream not in upstreams:
        raise InvalidRequest(
            f"The model `{model.id}` is not deployed on `{upstream}` (it is on {', '.join(sorted(upstreams))}).",
            param="upstream",
            code="invalid_value",
        )
