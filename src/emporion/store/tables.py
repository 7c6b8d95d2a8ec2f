"""The database tables; their history lives in store/migrations."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


TOP_LEVEL = text("parent_id IS NULL")


class Organization(Base):
    """A name is unique among its parent's sub-organizations, and among top-level organizations
    (NULL parents are distinct in a unique index, hence the partial one): another tenant's names
    are no business of a reseller creating its own."""

    __tablename__ = "organizations"
    __table_args__ = (
        Index("uq_organizations_name_parent_id", "name", "parent_id", unique=True),
        Index("uq_organizations_name_top_level", "name", unique=True, sqlite_where=TOP_LEVEL, postgresql_where=TOP_LEVEL),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column(BigInteger)
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("organizations.id"), nullable=True, index=True)  # its reseller
    tier: Mapped[str] = mapped_column(String(20), default="free")
    tier_pinned: Mapped[bool] = mapped_column(Boolean, default=False)  # set by hand: never moved automatically
    suspended_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    suspended_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    suspended_by_operator: Mapped[bool] = mapped_column(Boolean, default=False)  # then only the operator lifts it
    resale_percent: Mapped[str] = mapped_column(String(40), default="0")  # its markup to its sub-organizations
    resale_fixed: Mapped[str] = mapped_column(String(40), default="0")  # USD per request, exact decimal text
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)  # null: the tier's (org) / none (key)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Prompt and completion bodies in the request log: kept this many days; null: none (zero retention)
    retention_days: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Member(Base):
    __tablename__ = "members"
    __table_args__ = (UniqueConstraint("org_id", "email", name="uq_members_org_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(10))  # owner, admin, member
    created_at: Mapped[int] = mapped_column(BigInteger)


class ApiKey(Base):
    """An API key, kept only as its SHA-256 hash and the prefix shown to people."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    kind: Mapped[str] = mapped_column(String(10), default="api")  # api: /v1; admin: /admin/v1 for its organization's tree
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    allowed_models: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list; null: every model
    budget_nanos: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # over the key's life
    budget_period: Mapped[str | None] = mapped_column(String(10), nullable=True)  # day, week, month
    period_budget_nanos: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)  # null: the tier's (org) / none (key)
    tokens_per_minute: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)


class LocalModel(Base):
    """A GGUF file the operator added with ``emporion models add``."""

    __tablename__ = "local_models"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    path: Mapped[str] = mapped_column(Text)
    context_length: Mapped[int] = mapped_column(Integer)
    has_chat_template: Mapped[bool] = mapped_column(Boolean)
    architecture: Mapped[str] = mapped_column(String(100))
    license: Mapped[str] = mapped_column(String(200))
    release: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[int] = mapped_column(BigInteger)


class Account(Base):
    """A ledger account. Customer accounts belong to an organization; the others are the
    operator's books (cash received, free grants, amounts owed to providers, margins)."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # customer, cash, grants, provider, operator, reseller
    org_id: Mapped[str | None] = mapped_column(ForeignKey("organizations.id"), nullable=True, index=True)
    balance_nanos: Mapped[int] = mapped_column(BigInteger, default=0)  # the sum of its entries, kept in step
    held_nanos: Mapped[int] = mapped_column(BigInteger, default=0)  # the sum of its open holds, kept in step


class Posting(Base):
    """One balanced movement of money; (request_id, kind) is unique, which makes charges idempotent."""

    __tablename__ = "postings"
    __table_args__ = (UniqueConstraint("request_id", "kind", name="uq_postings_request_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(20))  # topup, grant, charge, refund, expiry
    request_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


class Entry(Base):
    __tablename__ = "entries"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    posting_id: Mapped[int] = mapped_column(ForeignKey("postings.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount_nanos: Mapped[int] = mapped_column(BigInteger)  # positive: into the account


class Hold(Base):
    """A reservation of a request's worst-case cost on a customer's balance until it settles."""

    __tablename__ = "holds"

    request_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount_nanos: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(10), index=True)  # open, settled, released, expired
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
    budget_ids: Mapped[str] = mapped_column(Text, default="")  # space-separated budgets it also holds against


class Budget(Base):
    """A spending cap (a key's total, or one period of it): used + held never exceeds limit."""

    __tablename__ = "budgets"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)  # key:<id>, key:<id>:month:2026-11, ...
    limit_nanos: Mapped[int] = mapped_column(BigInteger)
    used_nanos: Mapped[int] = mapped_column(BigInteger, default=0)
    held_nanos: Mapped[int] = mapped_column(BigInteger, default=0)


class PriceRow(Base):
    """A model's price (USD per token, exact decimal text) from ``effective_at`` on; upstream ""
    is the model's price on every deployment that has none of its own."""

    __tablename__ = "prices"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(200))
    upstream: Mapped[str] = mapped_column(String(100), default="")
    prompt: Mapped[str] = mapped_column(String(40))
    completion: Mapped[str] = mapped_column(String(40))
    cached_prompt: Mapped[str | None] = mapped_column(String(40), nullable=True)
    cache_write: Mapped[str | None] = mapped_column(String(40), nullable=True)
    request: Mapped[str] = mapped_column(String(40), default="0")
    effective_at: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)


class MarginRow(Base):
    """The operator's margin from ``effective_at`` on; model_id "" is the global one."""

    __tablename__ = "margins"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(200), default="")
    percent: Mapped[str] = mapped_column(String(40))
    fixed: Mapped[str] = mapped_column(String(40))
    effective_at: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)


class RequestRecord(Base):
    """What one request did and cost: written with its settlement, in the same transaction."""

    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(200))
    upstream: Mapped[str] = mapped_column(String(100))
    upstream_model: Mapped[str] = mapped_column(String(200))
    provider: Mapped[str] = mapped_column(String(100))
    endpoint: Mapped[str] = mapped_column(String(20))
    streamed: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(20))  # completed, partial (cut after output), cancelled (client left), failed
    finish_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    input_tokens: Mapped[int] = mapped_column(Integer)
    cached_input_tokens: Mapped[int] = mapped_column(Integer)
    cache_write_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    usage_source: Mapped[str] = mapped_column(String(10))  # upstream (reported), counted (by Emporion)
    cost_nanos: Mapped[int] = mapped_column(BigInteger)  # what the customer paid
    provider_nanos: Mapped[int] = mapped_column(BigInteger)  # what the upstream is owed
    price_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), nullable=True)
    margin_id: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(BigInteger)
    end_user: Mapped[str | None] = mapped_column(String(256), nullable=True)  # the request's `user`
    tags: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON array: x-emporion-tags, metadata key:value


class IdempotencyKey(Base):
    """A generation request's ``Idempotency-Key``, per organization, for 24 hours: what the request
    was (a hash of its method, path and body), whether it is still running, and once it
    completed the response it gave, replayed to retries (store/idempotency.py)."""

    __tablename__ = "idempotency_keys"

    org_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # sha256 hex of the request
    token: Mapped[str] = mapped_column(String(32))  # the claim's: only its holder completes or releases it
    state: Mapped[str] = mapped_column(String(10))  # running, done
    created_at: Mapped[int] = mapped_column(BigInteger)
    locked_until: Mapped[int] = mapped_column(BigInteger)  # a running claim past this belonged to a dead process
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)  # created_at + 24 h: purged after
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    headers: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON object
    body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class AuditEvent(Base):
    """One change made to accounts (accounts/audit.py): who made it, what it was, the object it
    changed and the organization it concerns, with the object before and after (JSON, never a
    secret). Written in the change's own transaction; append-only: triggers refuse UPDATE and
    DELETE (migration 0006)."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_org_id", "org_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    created_at_ms: Mapped[int] = mapped_column(BigInteger, index=True)  # epoch milliseconds
    actor_kind: Mapped[str] = mapped_column(String(10))  # key, cli, system
    actor_key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    actor_org_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    actor_name: Mapped[str | None] = mapped_column(String(200), nullable=True)  # cli: "cli:<OS user>"
    action: Mapped[str] = mapped_column(String(40))  # organization.create, key.revoke, credit.top_up, price.set, ...
    object_type: Mapped[str] = mapped_column(String(40))  # organization, api_key, organization.member, generation, price, margin
    object_id: Mapped[str] = mapped_column(String(80), index=True)
    org_id: Mapped[str | None] = mapped_column(String(40), nullable=True)  # null: the operator's own (prices, margins)
    before: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON object; null: created
    after: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON object; null: removed


class StoredResponse(Base):
    """A response of ``POST /v1/responses`` with ``store`` on (the default), its organization's
    only, until ``expires_at`` (``[responses] store_days`` after it was made; the sweeper purges
    it then): the Response object as the client got it and the input items it answered, so that
    a later request can continue the conversation (``previous_response_id``). store/responses.py."""

    __tablename__ = "stored_responses"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
    previous_response_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    input_items: Mapped[str] = mapped_column(Text)  # JSON array, with ids
    response: Mapped[str] = mapped_column(Text)  # JSON object


class StoredFile(Base):
    """A file of ``/v1/files``: uploaded by an organization (``batch``, ``fine-tune``, …) or made
    by Emporion (``batch_output``: a batch's output and error files), its organization's only,
    kept in the database so that every replica serves it. store/files.py."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(20))
    size: Mapped[int] = mapped_column(BigInteger)  # bytes
    created_at: Mapped[int] = mapped_column(BigInteger)
    created_ns: Mapped[int] = mapped_column(BigInteger, index=True)  # the order of listing (seconds tie)
    expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)


class Batch(Base):
    """A batch of ``/v1/batches``: the lines of its input file, run by the batch worker of one
    replica at a time (``owner`` holds it until ``owner_until``, renewed while it runs; a replica
    that died lets another take over), from ``validating`` to an end state. store/batches.py."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40), index=True)
    key_id: Mapped[str] = mapped_column(String(40))  # whose key made it: the lines run as that key
    endpoint: Mapped[str] = mapped_column(String(40))
    input_file_id: Mapped[str] = mapped_column(String(40), index=True)
    completion_window: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(20), index=True)
    metadata_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    errors_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    price_factor: Mapped[str] = mapped_column(String(20))  # what a line pays of the price, frozen at creation
    total: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    completed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    failed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    output_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    created_ns: Mapped[int] = mapped_column(BigInteger, index=True)  # the order of listing and of running
    expires_at: Mapped[int] = mapped_column(BigInteger)
    in_progress_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finalizing_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    completed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    failed_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    expired_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cancelling_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cancelled_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    owner: Mapped[str | None] = mapped_column(String(60), nullable=True)
    owner_until: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class BatchLine(Base):
    """One line of a batch once the worker started it: ``running`` with the request id it runs
    under (written before the request is made, so that a restart can tell whether it was charged),
    then ``done`` with the response (or the error) that goes to the output (or error) file."""

    __tablename__ = "batch_lines"

    batch_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    line: Mapped[int] = mapped_column(Integer, primary_key=True)
    custom_id: Mapped[str] = mapped_column(String(255))
    request_id: Mapped[str] = mapped_column(String(80))
    state: Mapped[str] = mapped_column(String(10))  # running, done
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: it never got a response
    body: Mapped[str | None] = mapped_column(Text, nullable=True)  # the response body, JSON
    error_code: Mapped[str | None] = mapped_column(String(40), nullable=True)  # why it got no response
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    input_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cached_input_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    output_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cost_nanos: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class Preset(Base):
    """A named bundle of an organization's request settings (model or models, provider
    preferences, a system prompt, parameters), called as ``model: "@preset/NAME"``. pipeline/presets.py."""

    __tablename__ = "presets"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_presets_org_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40), index=True)
    name: Mapped[str] = mapped_column(String(64))
    config: Mapped[str] = mapped_column(Text)  # JSON: model, models, provider, system, parameters
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class RequestLogEntry(Base):
    """One call as the operator sees it (observe/request_log.py): refused ones too, written off the
    request path, never in the ledger's transaction. The billing record (``requests``) is separate."""

    __tablename__ = "request_log"
    __table_args__ = (Index("ix_request_log_org_id_created_ms", "org_id", "created_ms"),)

    id: Mapped[str] = mapped_column(String(80), primary_key=True)  # the request id
    org_id: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str] = mapped_column(String(40))
    end_user: Mapped[str | None] = mapped_column(String(256), nullable=True)
    tags: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON array
    endpoint: Mapped[str] = mapped_column(String(20))
    model: Mapped[str] = mapped_column(String(200))  # as asked
    served_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    deployment: Mapped[str | None] = mapped_column(String(400), nullable=True)
    upstream: Mapped[str | None] = mapped_column(String(100), nullable=True)
    provider: Mapped[str | None] = mapped_column(String(100), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), index=True)  # completed, partial, cancelled, failed, refused
    http_status: Mapped[int] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(80), nullable=True)
    streamed: Mapped[bool] = mapped_column(Boolean)
    input_tokens: Mapped[int] = mapped_column(Integer)
    cached_input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    cost_nanos: Mapped[int] = mapped_column(BigInteger)
    latency_ms: Mapped[int] = mapped_column(Integer)
    ttft_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    flags: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON array: screening flags
    client_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    created_ms: Mapped[int] = mapped_column(BigInteger)


class RequestBody(Base):
    """A request's prompt and completion, kept only under its organization's retention policy and
    purged by the sweeper at ``expires_at`` (its request log entry stays)."""

    __tablename__ = "request_bodies"

    request_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40))
    prompt: Mapped[str] = mapped_column(Text)  # JSON: the request as it came
    completion: Mapped[str | None] = mapped_column(Text, nullable=True)  # the answer's text
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


class LicenseAcceptance(Base):
    """An organization accepted a model's license (its terms require it: ``license_acceptance``);
    until then the model does not serve it. ``license``: the license accepted (a model whose license
    changes must be accepted again). ``accepted_by``: who, as the audit trail names actors."""

    __tablename__ = "license_acceptances"
    __table_args__ = (UniqueConstraint("org_id", "model_id", name="uq_license_acceptances_org_id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(40), ForeignKey("organizations.id"), index=True)
    model_id: Mapped[str] = mapped_column(String(200))
    license: Mapped[str] = mapped_column(String(200))
    accepted_by: Mapped[str] = mapped_column(String(200))
    accepted_at: Mapped[int] = mapped_column(BigInteger)
