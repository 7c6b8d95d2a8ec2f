"""The record of one request (written with its settlement), as ``GET /v1/generation`` shows it."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import select

from emporion.core.money import Nanos, to_usd
from emporion.store.session import Database
from emporion.store.tables import RequestRecord


async def find(db: Database, org_id: str, request_id: str) -> RequestRecord | None:
    """The organization's own record only: another organization's id is answered as unknown."""
    async with db.session() as session:
        return await session.scalar(select(RequestRecord).where(RequestRecord.id == request_id, RequestRecord.org_id == org_id))


def to_wire(record: RequestRecord, wholesale: bool = True) -> dict[str, Any]:
    """OpenRouter's generation object, with Emporion's deployment and ledger fields. Without
    ``wholesale`` (for a reseller's customers) what the upstream and the operator were paid, and
    the price versions behind them, are left out: they would give the reseller's markup away."""
    prompt = record.input_tokens + record.cached_input_tokens + record.cache_write_tokens
    wire = {
        "id": record.id,
        "model": record.model,
        "provider_name": record.provider,
        "upstream": record.upstream,
        "upstream_model": record.upstream_model,
        "api_key_id": record.key_id,
        "created_at": record.created_at,
        "endpoint": record.endpoint,
        "streamed": record.streamed,
        "status": record.status,
        "finish_reason": record.finish_reason,
        "tokens_prompt": prompt,
        "tokens_completion": record.output_tokens,
        "native_tokens_prompt": prompt,
        "native_tokens_completion": record.output_tokens,
        "native_tokens_cached": record.cached_input_tokens,
        "native_tokens_cache_write": record.cache_write_tokens,
        "usage_source": record.usage_source,
        "total_cost": float(to_usd(Nanos(record.cost_nanos))),
        "total_cost_nanos": record.cost_nanos,
        "upstream_inference_cost": float(to_usd(Nanos(record.provider_nanos))),
        "price_id": record.price_id,
        "margin_id": record.margin_id,
        "attempts": record.attempts,
        "latency": record.latency_ms,
        "user": record.end_user,
        "tags": orjson.loads(record.tags) if record.tags else [],
    }
    if not wholesale:
        for name in ("upstream_inference_cost", "price_id", "margin_id"):
            del wire[name]
    return wire
