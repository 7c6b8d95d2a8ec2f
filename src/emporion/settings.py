"""Settings: the built-in defaults, an optional TOML config file over them, validated strictly."""

from __future__ import annotations

import os
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Release = Literal["closed", "open-weights", "open-source"]
Modality = Literal["text", "image", "audio", "file", "embeddings"]
SqliteSynchronous = Literal["full", "normal"]  # SQLite's PRAGMA synchronous (store/session.py)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    max_body_bytes: Annotated[int, Field(gt=0)] = 8 * 1024 * 1024
    auth_cache_s: Annotated[float, Field(ge=0)] = 5.0
    cors_origins: list[str] = []  # browser origins allowed to call the API ("https://app.example"); none: no CORS headers
    header_timeout_s: Annotated[float, Field(gt=0)] = 10.0  # a request's headers must arrive within this (else 408)
    body_timeout_s: Annotated[float, Field(gt=0)] = 30.0  # and its body within this, once read (else 408)
    catalog_refresh_s: Annotated[float, Field(gt=0)] = 2.0  # how often each replica picks up added models and new prices


class EngineSettings(Strict):
    """The local llama.cpp engine. On 2 cores, one generation thread keeps decoding fast while
    the gateway uses the other core; prompt processing (short bursts) gets both."""

    enabled: bool = True  # false: no local GGUF models (a gateway for remote upstreams only)
    llama_server: Path | None = None
    threads: Annotated[int, Field(ge=1)] = 1
    threads_batch: Annotated[int, Field(ge=1)] = 2
    parallel: Annotated[int, Field(ge=1, le=64)] = 4
    ctx_per_request: Annotated[int, Field(ge=256)] = 8192
    queue_size: Annotated[int, Field(ge=0)] = 32
    startup_timeout_s: Annotated[float, Field(gt=0)] = 180.0
    restart_backoff_s: Annotated[float, Field(gt=0)] = 1.0
    default_max_tokens: Annotated[int, Field(ge=1)] = 1024  # a local generation that names no max_tokens stops here


class EmbeddingSettings(Strict):
    enabled: bool = True  # false: no local embedding model (and no torch in the process)
    threads: Annotated[int, Field(ge=1)] = 1
    max_batch: Annotated[int, Field(ge=1)] = 64
    max_inputs: Annotated[int, Field(ge=1)] = 2048


class Pricing(Strict):
    """USD per token, exact decimals (written as strings in TOML)."""

    prompt: Decimal = Decimal(0)
    completion: Decimal = Decimal(0)
    cached_prompt: Decimal | None = None  # a prompt token read from the provider's cache (default: prompt)
    cache_write: Decimal | None = None  # a prompt token written to the provider's cache (default: prompt)

    @field_validator("prompt", "completion", "cached_prompt", "cache_write")
    @classmethod
    def _non_negative(cls, value: Decimal | None) -> Decimal | None:
        if value is not None and (not value.is_finite() or value < 0):
            raise ValueError("a price is a non-negative decimal number of USD per token")
        return value


class UpstreamConfig(Strict):
    name: str
    adapter: str = "openai_compat"
    base_url: str
    api_key_env: str | None = None
    timeout_s: Annotated[float, Field(gt=0)] = 600.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    local: bool = False  # on the operator's own infrastructure (a vLLM or llama.cpp server, say)
    data_collection: Literal["allow", "deny"] = "allow"  # "deny": the host keeps no prompts
    developer_role: bool = True  # quirk: false where the host knows only system/user/assistant
    responses_api: bool = False  # it serves /v1/responses itself (OpenAI, vLLM): Responses requests pass through


class DeploymentConfig(Strict):
    upstream: str
    model: str | None = None  # the name the upstream knows; default: the model's id
    weight: Annotated[int, Field(ge=0)] = 1
    pricing: Pricing | None = None  # default: the model's pricing


class RoutingSettings(Strict):
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 3  # upstream calls per request, fallbacks included
    retries_per_deployment: Annotated[int, Field(ge=0)] = 1
    backoff_base_s: Annotated[float, Field(ge=0)] = 0.1
    max_backoff_s: Annotated[float, Field(ge=0)] = 2.0  # a longer Retry-After moves on to the next deployment
    breaker_threshold: Annotated[int, Field(ge=1)] = 5  # consecutive failures that take a deployment out
    breaker_cooldown_s: Annotated[float, Field(gt=0)] = 30.0
    # A conversation served with prompt caching goes back to the deployment that holds its cache for
    # this long after its last turn (Anthropic's default cache lives 5 minutes); 0: no such stickiness.
    cache_affinity_s: Annotated[float, Field(ge=0)] = 300.0


class OrgPolicy(Strict):
    """What an organization's requests may reach (keyed by organization name in the config)."""

    allowed_upstreams: list[str] | None = None  # upstream names; "local" means every local one
    data_policy: Literal["any", "local-only"] = "any"


class Evaluation(Strict):
    """One published evaluation of a model, as its card lists it."""

    name: str  # the benchmark: "MMLU", "MTEB STS"
    metric: str  # what was measured: "accuracy (5-shot)", "Spearman"
    value: str | float  # as published: 41.2, "68.06"
    source: str | None = None  # where it was published (a URL written as text, a paper)


class ModelCard(Strict):
    """``[models."x".card]``: what GET /v1/models/{id}/card says beyond the catalog's fields. For a
    model already known only the fields given are changed; null in the card: not published."""

    intended_uses: str | None = None
    limitations: str | None = None
    training_data: str | None = None  # a summary, where the provider publishes one
    evaluations: list[Evaluation] | None = None
    terms_url: str | None = None  # the license's terms (default: the known URL of `license`, see catalog/cards.py)


class ModelConfig(Strict):
    """A model in the config file. For a model already known (built-in or added with
    ``emporion models add``) only the fields given are changed."""

    name: str | None = None
    kind: Literal["chat", "embedding"] | None = None
    upstream: str | None = None  # shorthand for one deployment
    upstream_model: str | None = None
    deployments: list[DeploymentConfig] | None = None
    split: Literal["ordered", "weighted"] | None = None  # ordered: fallbacks in order; weighted: by weight
    sticky: bool | None = None  # weighted: the same `user` always lands on the same deployment
    gguf: Path | None = None
    chat_template: str | None = None
    context_length: Annotated[int, Field(gt=0)] | None = None
    release: Release | None = None
    license: str | None = None
    provider: str | None = None
    owned_by: str | None = None
    description: str | None = None
    input_modalities: list[Modality] | None = None
    output_modalities: list[Modality] | None = None
    pricing: Pricing | None = None
    card: ModelCard | None = None
    # true: an organization is served only once one of its admin keys (or the operator) accepted the license
    license_acceptance: bool | None = None


class DatabaseSettings(Strict):
    url: str | None = None  # default: SQLite in the data dir; postgresql+asyncpg://... to share one between replicas
    sqlite_synchronous: SqliteSynchronous = "full"  # "normal": faster commits, but a power loss can undo the last ones


class LimitSettings(Strict):
    redis_url: str | None = None  # redis://127.0.0.1:6379/0: limits shared exactly by every replica
    replicas: Annotated[int, Field(ge=1)] = 1  # while Redis is down each replica enforces limit / replicas


def _usd(value: Decimal) -> Decimal:
    if not value.is_finite() or value < 0:
        raise ValueError("an amount of money is a non-negative decimal number of USD")
    return value


class MeteringSettings(Strict):
    free_credit_usd: Decimal = Decimal("1")  # granted once to every new top-level organization
    margin_percent: Decimal = Decimal(0)  # the operator's global margin, until one is set with the admin API
    margin_fixed_usd: Decimal = Decimal(0)  # per request
    hold_ttl_s: Annotated[float, Field(ge=1)] = 900.0  # a hold not renewed for this long belonged to a dead process
    sweep_interval_s: Annotated[float, Field(gt=0)] = 30.0  # each sweep renews the holds of requests still running
    image_tokens: Annotated[int, Field(ge=0)] = 2000  # the worst case counted for one image part
    # balance leases (metering/leases.py): a busy account's requests hold and settle in memory
    leases: bool = True
    lease_share: Annotated[float, Field(gt=0, le=0.5)] = 0.1  # the most of an available balance one lease takes
    lease_min_rate: Annotated[float, Field(ge=0)] = 10.0  # requests a second from which an account is served from leases
    settle_flush_ms: Annotated[float, Field(ge=0, le=1000)] = 20.0  # the longest a settlement written behind waits

    _check = field_validator("free_credit_usd", "margin_percent", "margin_fixed_usd")(_usd)

    @model_validator(mode="after")
    def _renewed_in_time(self) -> MeteringSettings:
        if self.sweep_interval_s * 2 > self.hold_ttl_s:
            raise ValueError("sweep_interval_s must be at most half of hold_ttl_s, or running requests' holds could expire")
        return self


class ResponsesSettings(Strict):
    store_days: Annotated[float, Field(gt=0, le=3650)] = (
        30.0  # how long a stored response of /v1/responses is kept (OpenAI: 30 days)
    )


class RequestLogSettings(Strict):
    enabled: bool = True  # every call in the request log (GET /admin/v1/requests, emporion requests)
    flush_ms: Annotated[int, Field(ge=10, le=60_000)] = 500  # how long an entry waits to be written with others
    max_queued: Annotated[int, Field(ge=100)] = 10_000  # entries waiting beyond this: the oldest are dropped
    # where it is written: by default a SQLite file of its own beside SQLite's ledger (so that its
    # writes never wait for the ledger's write lock, nor the ledger's for them), the database itself
    # on PostgreSQL (row locks: no such wait)
    database_url: str = ""


class FileSettings(Strict):
    max_bytes: Annotated[int, Field(gt=0)] = 200 * 1024 * 1024  # one uploaded file (OpenAI's batch input limit)
    output_days: Annotated[float, Field(gt=0, le=3650)] = 30.0  # how long a batch's output and error files are kept


class BatchSettings(Strict):
    """The batch worker: every replica runs one, taking batches one at a time."""

    enabled: bool = True  # false: this replica runs no batch lines (others, or a later start, will)
    discount_percent: Annotated[Decimal, Field(ge=0, le=100)] = Decimal(50)  # off the price of every line (OpenAI: 50)
    concurrency: Annotated[int, Field(ge=1, le=256)] = 4  # lines of a batch running at once on this replica
    max_lines: Annotated[int, Field(ge=1)] = 50_000
    poll_s: Annotated[float, Field(gt=0)] = 1.0  # how often an idle worker looks for a batch to run
    lease_s: Annotated[float, Field(ge=1)] = 60.0  # a batch its replica stopped renewing for this long is taken over


class MetricsSettings(Strict):
    """``GET /metrics`` (observe/metrics.py): this replica's Prometheus metrics."""

    enabled: bool = True  # false: nothing is counted, and /metrics answers 404
    token: str = ""  # set: a scrape sends `Authorization: Bearer <token>`; empty: only loopback clients may scrape
    organizations: Annotated[int, Field(ge=0, le=10_000)] = 100  # organizations labelled by id (first seen); the rest: "other"


class TierSettings(Strict):
    """A tier's limits per organization, and what an organization needs to reach it."""

    requests_per_minute: Annotated[int, Field(ge=1)]
    tokens_per_minute: Annotated[int, Field(ge=1)]
    max_concurrent: Annotated[int, Field(ge=1)]
    min_paid_usd: Decimal = Decimal(0)  # paid: top-ups and transfers from a reseller (grants do not count)
    min_age_days: Annotated[int, Field(ge=0)] = 0

    _check = field_validator("min_paid_usd")(_usd)


OPERATOR_TIER = "operator"  # the operator's own organizations: no tier limits unless [tiers.operator] sets them

# As OpenAI widens access: paid spend and account age move an organization up, never down.
DEFAULT_TIERS = {
    "free": TierSettings(requests_per_minute=20, tokens_per_minute=40_000, max_concurrent=4),
    "tier-1": TierSettings(requests_per_minute=500, tokens_per_minute=200_000, max_concurrent=50, min_paid_usd=Decimal(5)),
    "tier-2": TierSettings(
        requests_per_minute=5_000, tokens_per_minute=2_000_000, max_concurrent=200, min_paid_usd=Decimal(50), min_age_days=7
    ),
    "tier-3": TierSettings(
        requests_per_minute=5_000, tokens_per_minute=4_000_000, max_concurrent=500, min_paid_usd=Decimal(100), min_age_days=7
    ),
    "tier-4": TierSettings(
        requests_per_minute=10_000, tokens_per_minute=10_000_000, max_concurrent=1_000, min_paid_usd=Decimal(250), min_age_days=14
    ),
    "tier-5": TierSettings(
        requests_per_minute=30_000,
        tokens_per_minute=150_000_000,
        max_concurrent=5_000,
        min_paid_usd=Decimal(1_000),
        min_age_days=30,
    ),
}


class Settings(Strict):
    data_dir: Path
    server: ServerSettings = ServerSettings()
    engine: EngineSettings = EngineSettings()
    embeddings: EmbeddingSettings = EmbeddingSettings()
    routing: RoutingSettings = RoutingSettings()
    upstreams: list[UpstreamConfig] = []
    models: dict[str, ModelConfig] = {}
    policies: dict[str, OrgPolicy] = {}
    database: DatabaseSettings = DatabaseSettings()
    limits: LimitSettings = LimitSettings()
    metering: MeteringSettings = MeteringSettings()
    responses: ResponsesSettings = ResponsesSettings()
    files: FileSettings = FileSettings()
    request_log: RequestLogSettings = RequestLogSettings()
    batches: BatchSettings = BatchSettings()
    metrics: MetricsSettings = MetricsSettings()
    tiers: dict[str, TierSettings] = DEFAULT_TIERS  # in order, lowest first; the first is where organizations start

    def tier(self, name: str) -> TierSettings | None:
        """A tier's limits. The operator's own tier (``OPERATOR_TIER``, the first organization's)
        has none unless ``[tiers.operator]`` sets them; an unknown name gets the first tier's."""
        found = self.tiers.get(name)
        if found is None and name != OPERATOR_TIER:
            found = next(iter(self.tiers.values()))
        return found

    def knows_tier(self, name: str) -> bool:
        return name in self.tiers or name == OPERATOR_TIER

    @property
    def tier_names(self) -> list[str]:
        return [*self.tiers, *([] if OPERATOR_TIER in self.tiers else [OPERATOR_TIER])]

    @property
    def database_url(self) -> str:
        url = os.environ.get("EMPORION_DATABASE_URL") or self.database.url
        return url or f"sqlite+aiosqlite:///{self.data_dir / 'emporion.db'}"

    @property
    def request_log_url(self) -> str:
        url = os.environ.get("EMPORION_REQUEST_LOG_URL") or self.request_log.database_url
        if url:
            return url
        main = self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'request_log.db'}" if main.startswith("sqlite") else main

    @property
    def redis_url(self) -> str | None:
        return os.environ.get("EMPORION_REDIS_URL") or self.limits.redis_url

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"


class ConfigError(Exception):
    """The config file cannot be read or does not validate; the message says where and why."""


def default_data_dir() -> Path:
    env = os.environ.get("EMPORION_DATA_DIR")
    return Path(env) if env else Path(platformdirs.user_data_dir("emporion"))


def load_settings(data_dir: Path | None = None, config: Path | None = None) -> Settings:
    """Defaults, then the config file (``--config``, ``EMPORION_CONFIG`` or ``DATA_DIR/config.toml``)."""
    data_dir = (data_dir or default_data_dir()).expanduser().resolve()
    if config is None and os.environ.get("EMPORION_CONFIG"):
        config = Path(os.environ["EMPORION_CONFIG"])
    if config is None and (data_dir / "config.toml").is_file():
        config = data_dir / "config.toml"
    raw: dict = {}
    if config is not None:
        try:
            raw = tomllib.loads(Path(config).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {config} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config} is not valid TOML: {exc}") from None
    if "data_dir" in raw:
        raise ConfigError(f"{config}: data_dir is set with --data-dir or EMPORION_DATA_DIR, not in the file")
    try:
        settings = Settings(data_dir=data_dir, **raw)
    except ValidationError as exc:
        raise ConfigError(f"config file {config} is invalid:\n{_explain(exc)}") from None
    names = [u.name for u in settings.upstreams]
    if len(names) != len(set(names)):
        raise ConfigError(f"config file {config}: two upstreams share a name")
    for model_id, model in settings.models.items():
        named = [model.upstream] if model.upstream else []
        named += [d.upstream for d in model.deployments or []]
        for upstream in named:
            if upstream not in names and not upstream.startswith("local:"):
                raise ConfigError(f"config file {config}: model {model_id!r} names unknown upstream {upstream!r}")
        if model.upstream and model.deployments:
            raise ConfigError(f"config file {config}: model {model_id!r} sets both `upstream` and `deployments`")
    return settings


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"])
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)
