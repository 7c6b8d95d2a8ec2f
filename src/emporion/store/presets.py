"""Presets in the database: an organization's named request settings (accounts service writes,
pipeline/presets.py reads)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from emporion.store.tables import Preset


async def upsert(session: AsyncSession, org_id: str, name: str, config: dict[str, Any]) -> tuple[Preset, Preset | None]:
    """The preset as set, and what it replaced (None: it is new)."""
    now = int(time.time())
    found = await get(session, org_id, name)
    before = None
    if found is None:
        found = Preset(id="preset_" + secrets.token_hex(12), org_id=org_id, name=name, created_at=now)
        session.add(found)
    else:
        before = Preset(
            id=found.id, org_id=org_id, name=name, config=found.config, created_at=found.created_at, updated_at=found.updated_at
        )
    found.config, found.updated_at = orjson.dumps(config).decode(), now
    await session.flush()
    return found, before


async def get(session: AsyncSession, org_id: str, name: str) -> Preset | None:
    return await session.scalar(select(Preset).where(Preset.org_id == org_id, Preset.name == name))


async def listed(session: AsyncSession, org_id: str) -> list[Preset]:
    return list((await session.scalars(select(Preset).where(Preset.org_id == org_id).order_by(Preset.name))).all())


def config_of(preset: Preset) -> dict[str, Any]:
    return orjson.loads(preset.config)
