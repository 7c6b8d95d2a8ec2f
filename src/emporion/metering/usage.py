"""Usage reports: an organization's settled requests, summed by day (UTC), model, API key, end
user or tag (a request with several tags is in the row of each; one without a user or a tag is in
the row ``""``).

The queries are SQLAlchemy Core and portable: a day is ``created_at - created_at % 86400`` in
integer arithmetic, so SQLite and PostgreSQL group the same requests into the same days.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import orjson
from sqlalchemy import ColumnElement, SQLColumnExpression, func, select

from emporion.core.money import Nanos
from emporion.errors import InvalidRequest
from emporion.store.session import Database
from emporion.store.tables import ApiKey, RequestRecord

if TYPE_CHECKING:
    from typing_extensions import TypeIs

GroupBy = Literal["day", "model", "key", "user", "tag"]
GROUPS: tuple[str, ...] = get_args(GroupBy)


def is_group(value: str) -> TypeIs[GroupBy]:
    """``value`` names a grouping of usage rows (what ``usage`` takes)."""
    return value in GROUPS


DAY_S = 86_400
DEFAULT_DAYS = 30
MAX_DAYS = 5 * 366


@dataclass(frozen=True, slots=True)
class UsageRow:
    group: str  # the day (YYYY-MM-DD, UTC), the model, the key id, the end user or the tag ("": none)
    requests: int
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    cost_nanos: Nanos  # what the organization paid
    key_prefix: str | None = None  # grouped by key: the key as people see it
    key_label: str | None = None


def parse_range(start: str | None, end: str | None, today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """``start`` and ``end`` (YYYY-MM-DD, UTC, both days included); by default the last 30 days
    up to today. A 400 naming the parameter otherwise."""
    last = _date("end", end) or today or dt.datetime.now(dt.UTC).date()
    first = _date("start", start) or last - dt.timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise InvalidRequest("`start` is after `end`.", param="start")
    if (last - first).days >= MAX_DAYS:
        raise InvalidRequest(f"A usage report spans at most {MAX_DAYS} days.", param="start")
    return first, last


def bounds(first: dt.date, last: dt.date) -> tuple[int, int]:
    """Days (both included) -> [start, end) in unix seconds."""
    return _epoch(first), _epoch(last) + DAY_S


def _epoch(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def _date(name: str, text: str | None) -> dt.date | None:
    if not text:
        return None
    try:
        if len(text) != 10 or not text.isascii():
            raise ValueError(text)
        day = dt.date.fromisoformat(text)
        if not 1970 <= day.year <= 9998:
            raise ValueError(text)
        return day
    except ValueError:
        raise InvalidRequest(f"`{name}` is a date written YYYY-MM-DD (1970 on), not {text[:20]!r}.", param=name) from None


def day_of(epoch_s: int) -> str:
    return dt.datetime.fromtimestamp(epoch_s - epoch_s % DAY_S, dt.UTC).date().isoformat()


async def usage(
    db: Database,
    org_id: str,
    start: int,
    end: int,
    group_by: GroupBy = "day",
    key_id: str | None = None,
    end_user: str | None = None,
) -> list[UsageRow]:
    """The organization's requests created in ``[start, end)`` (unix seconds), summed per group:
    days in order, models and keys by cost, largest first."""
    if group_by not in GROUPS:
        raise ValueError(f"group_by is one of {', '.join(GROUPS)}")
    r = RequestRecord
    columns: dict[str, SQLColumnExpression[Any]] = {
        "day": r.created_at - r.created_at % DAY_S,
        "model": r.model,
        "key": r.key_id,
        "user": func.coalesce(r.end_user, ""),
        "tag": func.coalesce(r.tags, ""),  # each set of tags, spread over its tags below
    }
    group: ColumnElement[Any] = columns[group_by].label("grp")
    sums = (
        func.count().label("requests"),
        func.coalesce(func.sum(r.input_tokens), 0),
        func.coalesce(func.sum(r.cached_input_tokens), 0),
        func.coalesce(func.sum(r.cache_write_tokens), 0),
        func.coalesce(func.sum(r.output_tokens), 0),
        func.coalesce(func.sum(r.cost_nanos), 0).label("cost"),
    )
    query = select(group, *sums).where(r.org_id == org_id, r.created_at >= start, r.created_at < end).group_by(group)
    if key_id is not None:
        query = query.where(r.key_id == key_id)
    if end_user is not None:
        query = query.where(r.end_user == end_user)
    rows = [tuple(row) for row in (await _fetch(db, query))]
    if group_by == "tag":
        rows = _by_tag(rows)
    labels = await _key_labels(db, org_id, [row[0] for row in rows]) if group_by == "key" else {}
    found = [
        UsageRow(
            day_of(int(grp)) if group_by == "day" else str(grp),
            int(requests),
            int(inp),
            int(cached),
            int(write),
            int(out),
            Nanos(int(cost)),
            *labels.get(str(grp), (None, None)),
        )
        for grp, requests, inp, cached, write, out, cost in rows
    ]
    if group_by == "day":
        return sorted(found, key=lambda row: row.group)
    return sorted(found, key=lambda row: (-row.cost_nanos, row.group))


async def report(
    db: Database,
    org_id: str,
    start: int,
    end: int,
    group_by: GroupBy = "day",
    key_id: str | None = None,
    end_user: str | None = None,
) -> tuple[list[UsageRow], UsageRow]:
    """The rows and their total. By tag, a request with several tags is in several rows: the total
    counts it once."""
    rows = await usage(db, org_id, start, end, group_by, key_id, end_user)
    every = await usage(db, org_id, start, end, "day", key_id, end_user) if group_by == "tag" else rows
    return rows, totals(every)


def _by_tag(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows per set of tags (a JSON array, or "") -> rows per tag: a set's sums go to each of its tags."""
    sums: dict[str, list[int]] = {}
    for tag_set, *numbers in rows:
        for tag in orjson.loads(tag_set) if tag_set else [""]:
            into = sums.setdefault(tag, [0] * len(numbers))
            for index, number in enumerate(numbers):
                into[index] += int(number)
    return [(tag, *numbers) for tag, numbers in sums.items()]


def totals(rows: list[UsageRow]) -> UsageRow:
    """The sum of the rows, exactly."""
    return UsageRow(
        "total",
        sum(row.requests for row in rows),
        sum(row.input_tokens for row in rows),
        sum(row.cached_input_tokens for row in rows),
        sum(row.cache_write_tokens for row in rows),
        sum(row.output_tokens for row in rows),
        Nanos(sum(row.cost_nanos for row in rows)),
    )


async def _fetch(db: Database, query):
    async with db.engine.connect() as conn:
        return (await conn.execute(query)).all()


async def _key_labels(db: Database, org_id: str, key_ids: list[str]) -> dict[str, tuple[str, str]]:
    """(prefix, label) of the organization's own keys among ``key_ids``."""
    if not key_ids:
        return {}
    rows = await _fetch(db, select(ApiKey.id, ApiKey.prefix, ApiKey.label).where(ApiKey.org_id == org_id, ApiKey.id.in_(key_ids)))
    return {key: (prefix, label) for key, prefix, label in rows}
