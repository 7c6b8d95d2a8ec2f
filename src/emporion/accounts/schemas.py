"""What the accounts service accepts: the admin API's request bodies and query, which the CLI
validates its options with too. Checks across fields raise InvalidRequest naming the field
(pydantic lets it through as is).

Money is exact: USD amounts arrive as decimal strings (or JSON numbers) and become Decimals,
never floats; an amount finer than a nano-USD is refused rather than rounded.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from emporion.core.money import NANOS_PER_USD, Nanos, format_usd, to_nanos
from emporion.core.requests import ChatCompletionRequest
from emporion.errors import InvalidRequest, invalid_request
from emporion.store.orgs import KeyColumns

MAX_USD = Decimal(1_000_000_000)  # a budget or a markup's fixed fee
MAX_CREDIT_USD = Decimal(10_000_000)  # one top-up or grant
MAX_PRICE_USD = Decimal(1_000)  # per token, or per request
MAX_PERCENT = Decimal(10_000)
MAX_INT32 = 2**31 - 1
MAX_EPOCH_S = 253_402_300_799  # 9999-12-31
MAX_AUDIT_PAGE = 500
DAY_S = 86_400


def _plain(value: Decimal) -> Decimal:
    """Plain decimal notation (1E-7 -> 0.0000001), short enough for the 40-character columns."""
    plain = Decimal(format(value.normalize(), "f"))
    if len(str(plain)) > 40:
        raise ValueError("a number with at most 40 characters")
    return plain


def plain(text: str | None) -> str | None:
    """Decimal text as people write it (the store may hold 1.5E-7 for 0.00000015)."""
    return None if text is None else format(Decimal(text).normalize(), "f")


def usd_fields(name: str, amount: int | None) -> dict[str, str | int | None]:
    """An amount as answers carry it: ``<name>_usd`` (exact decimal text) and ``<name>_nanos``."""
    return {f"{name}_usd": None if amount is None else format_usd(Nanos(amount)), f"{name}_nanos": amount}


def usd_text_fields(name: str, text: str) -> dict[str, str | int | None]:
    """``usd_fields`` of an amount stored as decimal text (a markup's or a margin's fixed fee)."""
    return usd_fields(name, to_nanos(Decimal(text)))


def _bounded(most: Decimal, *, positive: bool = False, nanos: bool = True):
    def check(value: Decimal) -> Decimal:
        if value < 0 or (positive and value == 0):
            raise ValueError("a positive amount" if positive else "a non-negative amount")
        if value > most:
            raise ValueError(f"at most {most}")
        if nanos and value * NANOS_PER_USD != (value * NANOS_PER_USD).to_integral_value():
            raise ValueError("an amount of USD with at most 9 decimal places (1 nano-USD)")
        return _plain(value)

    return AfterValidator(check)


Usd = Annotated[Decimal, _bounded(MAX_USD)]
CreditUsd = Annotated[Decimal, _bounded(MAX_CREDIT_USD, positive=True)]
PerToken = Annotated[Decimal, _bounded(MAX_PRICE_USD, nanos=False)]
Percent = Annotated[Decimal, _bounded(MAX_PERCENT, nanos=False)]
PerMinute = Annotated[int, Field(ge=1, le=MAX_INT32)]
Epoch = Annotated[int, Field(ge=0, le=MAX_EPOCH_S)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Email = Annotated[
    str, StringConstraints(strip_whitespace=True, to_lower=True, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
]
Role = Literal["owner", "admin", "member"]
RESALE_FIELDS = frozenset({"resale_percent", "resale_fixed_usd"})
LIMIT_FIELDS = frozenset({"requests_per_minute", "tokens_per_minute", "max_concurrent"})
Period = Literal["day", "week", "month"]


def nanos(usd: Decimal | None) -> Nanos | None:
    return None if usd is None else to_nanos(usd)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateOrganization(Body):
    name: Name
    parent_id: Id | None = None
    tier: str | None = None  # set by hand: pinned


class UpdateOrganization(Body):
    """Fields left out stay as they are; a limit set to null goes back to the tier's."""

    resale_percent: Percent | None = None
    resale_fixed_usd: Usd | None = None
    requests_per_minute: PerMinute | None = None
    tokens_per_minute: PerMinute | None = None
    max_concurrent: PerMinute | None = None
    # how long the request log keeps prompt and completion bodies; 0 or null: not at all (the default)
    retention_days: Annotated[int, Field(ge=0, le=3650)] | None = None

    @model_validator(mode="after")
    def _no_null_markup(self) -> UpdateOrganization:
        for name in RESALE_FIELDS & self.model_fields_set:
            if getattr(self, name) is None:
                raise InvalidRequest(
                    f"Invalid '{name}': it cannot be null (0 means no markup).", param=name, code="invalid_value"
                )
        return self


class Suspend(Body):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] = ""


class SetTier(Body):
    tier: str | None = None
    pinned: bool = True  # false: the tier floats again with paid spend and age

    @model_validator(mode="after")
    def _tier_when_pinned(self) -> SetTier:
        if self.pinned and self.tier is None:
            message = "Missing required parameter: 'tier' (unless 'pinned' is false)."
            raise InvalidRequest(message, param="tier", code="missing_required_parameter")
        return self


class AddMember(Body):
    email: Email
    role: Role = "member"


class CreateKey(Body):
    label: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] = ""
    kind: Literal["api", "admin", "operator"] = "api"
    budget_usd: Usd | None = None
    budget_period: Period | None = None
    period_budget_usd: Usd | None = None
    allowed_models: Annotated[list[Id], Field(min_length=1, max_length=1000)] | None = None
    expires_at: Epoch | None = None
    expires_in_days: Annotated[int, Field(ge=1, le=36_500)] | None = None
    requests_per_minute: PerMinute | None = None
    tokens_per_minute: PerMinute | None = None
    max_concurrent: PerMinute | None = None

    @model_validator(mode="after")
    def _consistent(self) -> CreateKey:
        if (self.budget_period is None) != (self.period_budget_usd is None):
            missing = "period_budget_usd" if self.budget_period else "budget_period"
            message = f"'budget_period' and 'period_budget_usd' go together: '{missing}' is missing."
            raise InvalidRequest(message, param=missing, code="missing_required_parameter")
        if self.expires_at is not None and self.expires_in_days is not None:
            raise InvalidRequest(
                "Give 'expires_at' or 'expires_in_days', not both.", param="expires_in_days", code="invalid_value"
            )
        if self.expires_at is not None and self.expires_at <= time.time():
            raise InvalidRequest("Invalid 'expires_at': it is in the past.", param="expires_at", code="invalid_value")
        return self

    def columns(self, now: float | None = None) -> KeyColumns:
        expires_at = self.expires_at
        if self.expires_in_days is not None:
            expires_at = int(time.time() if now is None else now) + self.expires_in_days * DAY_S
        return KeyColumns(
            kind=self.kind,
            label=self.label,
            expires_at=expires_at,
            allowed_models=None if self.allowed_models is None else sorted(set(self.allowed_models)),
            budget_nanos=nanos(self.budget_usd),
            budget_period=self.budget_period,
            period_budget_nanos=nanos(self.period_budget_usd),
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            max_concurrent=self.max_concurrent,
        )


class AddCredit(Body):
    amount_usd: CreditUsd
    kind: Literal["top_up", "grant", "transfer"]  # transfer: from the organization's reseller (its parent)
    reference: Annotated[str, StringConstraints(min_length=1, max_length=80)] | None = None  # makes it idempotent


class SetPrice(Body):
    """USD per token (``request``: per request), from ``effective_at`` (default now) on."""

    model: Id
    upstream: Annotated[str, StringConstraints(max_length=100)] = ""  # "": every deployment without its own
    prompt: PerToken
    completion: PerToken
    cached_prompt: PerToken | None = None
    cache_write: PerToken | None = None
    request: PerToken = Decimal(0)
    effective_at: Epoch | None = None


class SetMargin(Body):
    model: Id | None = None  # None: the global margin
    percent: Percent = Decimal(0)
    fixed_usd: Usd = Decimal(0)
    effective_at: Epoch | None = None


class AuditQuery(BaseModel):
    """``GET /admin/v1/audit``'s query (and ``emporion audit list``'s options): events newest
    first, ``after`` the id of the last one of the previous page; ``since`` (inclusive) and
    ``until`` (exclusive) in epoch seconds."""

    model_config = ConfigDict(extra="ignore")  # a query string may carry more than we read

    org_id: Id | None = None
    action: Annotated[str, StringConstraints(min_length=1, max_length=40)] | None = None
    object_id: Annotated[str, StringConstraints(min_length=1, max_length=80)] | None = None
    since: Annotated[Decimal, Field(ge=0, le=MAX_EPOCH_S, allow_inf_nan=False)] | None = None
    until: Annotated[Decimal, Field(ge=0, le=MAX_EPOCH_S, allow_inf_nan=False)] | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_AUDIT_PAGE)] = 50
    after: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = None


PresetName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
# What a preset may set beside the model: the request's parameters, never its input or how it is sent.
PRESET_EXCLUDED = frozenset({"model", "messages", "prompt", "input", "stream", "stream_options", "n"})


class SetPreset(Body):
    """``model: "@preset/NAME"`` then means these settings: the request's own fields win over the
    preset's parameters; the system prompt goes before the request's messages."""

    name: PresetName
    model: Id | None = None
    models: Annotated[list[Id], Field(min_length=1, max_length=8)] | None = None
    provider: dict[str, Any] | None = None
    system: Annotated[str, StringConstraints(max_length=100_000)] | None = None
    parameters: dict[str, Any] = {}

    @model_validator(mode="after")
    def _usable(self) -> SetPreset:
        if self.model is None and self.models is None:
            raise InvalidRequest("A preset names a `model`, or `models` to try in order.", param="model")
        excluded = sorted(PRESET_EXCLUDED & set(self.parameters))
        if excluded:
            raise InvalidRequest(f"A preset's parameters cannot set {', '.join(excluded)}: the request does.", param="parameters")
        probe = {"model": "preset", "messages": [{"role": "user", "content": "x"}], **self.parameters}
        if self.provider is not None:
            probe["provider"] = self.provider
        try:  # what a chat request would refuse, the preset refuses now rather than on every call
            ChatCompletionRequest.model_validate_json(orjson.dumps(probe))
        except ValidationError as exc:
            error = invalid_request(exc)
            where = error.param if error.param == "provider" or error.param is None else f"parameters.{error.param}"
            raise InvalidRequest(error.message, param=where) from None
        return self

    def config(self) -> dict[str, Any]:
        return self.model_dump(exclude={"name"}, exclude_none=True)


class RequestLogQuery(BaseModel):
    """``GET /admin/v1/requests``'s query (and ``emporion requests list``'s options): entries
    newest first, ``after`` the id of the last one of the previous page; ``since`` (inclusive) and
    ``until`` (exclusive) in epoch seconds."""

    model_config = ConfigDict(extra="ignore")

    org_id: Id | None = None
    key_id: Id | None = None
    model: Id | None = None
    status: Literal["completed", "partial", "cancelled", "failed", "refused"] | None = None
    user: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    since: Annotated[Decimal, Field(ge=0, le=MAX_EPOCH_S, allow_inf_nan=False)] | None = None
    until: Annotated[Decimal, Field(ge=0, le=MAX_EPOCH_S, allow_inf_nan=False)] | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_AUDIT_PAGE)] = 50
    after: Annotated[str, StringConstraints(min_length=1, max_length=80)] | None = None


class AcceptLicense(Body):
    """An organization accepts the license of a model whose terms require it (``license_acceptance``)."""

    model: Id
