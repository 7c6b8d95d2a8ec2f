"""Monthly statements: one organization's credit account over one calendar month (UTC), read
from the ledger's entries, and rendered as JSON, CSV or PDF.

opening balance + credits + charges + refunds + adjustments = closing balance, exactly: every
amount is a sum of the account's entries. The closing balance is also checked against the
account's running balance (less what was posted after the month), which the ledger keeps in step
separately; a difference is a broken ledger and is raised, never printed.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import io
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import aliased

from emporion.core.money import Nanos, format_usd
from emporion.errors import EmporionError, InvalidRequest, NotFound
from emporion.metering.ledger import customer
from emporion.metering.usage import UsageRow, usage
from emporion.store.session import Database
from emporion.store.tables import Account, Entry, Organization, Posting, RequestRecord

MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")  # ASCII digits only
CREDIT_KINDS = ("topup", "grant", "transfer_in")
UNRECORDED = "(no request record)"
LINES_PER_PAGE = 40


class LedgerMismatch(EmporionError):
    """The account's entries and its running balance disagree: never expected."""

    code = "ledger_mismatch"


@dataclass(frozen=True, slots=True)
class Movement:
    kind: str  # topup, grant, transfer_in, refund, transfer_out, expiry, ...
    count: int
    amount_nanos: int  # signed: positive into the balance


@dataclass(frozen=True, slots=True)
class ChargeLine:
    model: str
    requests: int
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    amount_nanos: int  # negative: out of the balance


@dataclass(frozen=True, slots=True)
class Statement:
    org_id: str
    org_name: str
    month: str  # YYYY-MM
    start: int  # unix seconds, the first second of the month (UTC)
    end: int  # the first second of the next month
    opening_nanos: int
    credits: tuple[Movement, ...]
    charges: tuple[ChargeLine, ...]
    refunds: tuple[Movement, ...]
    adjustments: tuple[Movement, ...]  # anything else (transfers out, expiries)
    closing_nanos: int
    # The month's requests again, by end user and by tag (a breakdown of the charges, from the
    # request records: not more money; a request with several tags is under each of them).
    by_user: tuple[UsageRow, ...] = ()
    by_tag: tuple[UsageRow, ...] = ()

    @property
    def credits_nanos(self) -> int:
        return sum(line.amount_nanos for line in self.credits)

    @property
    def charges_nanos(self) -> int:
        return sum(line.amount_nanos for line in self.charges)

    @property
    def refunds_nanos(self) -> int:
        return sum(line.amount_nanos for line in self.refunds)

    @property
    def adjustments_nanos(self) -> int:
        return sum(line.amount_nanos for line in self.adjustments)

    def summary(self) -> list[tuple[str, int]]:
        return [
            ("opening_balance", self.opening_nanos),
            ("credits", self.credits_nanos),
            ("charges", self.charges_nanos),
            ("refunds", self.refunds_nanos),
            ("adjustments", self.adjustments_nanos),
            ("closing_balance", self.closing_nanos),
        ]


def month_bounds(month: str) -> tuple[int, int]:
    """``YYYY-MM`` -> [start, end) in unix seconds (UTC); a 400 naming ``month`` otherwise."""
    found = MONTH.fullmatch(month)
    if found is None or not (1970 <= int(found[1]) <= 9998 and 1 <= int(found[2]) <= 12):
        raise InvalidRequest(f"A month is written YYYY-MM (for example 2026-01), not {month[:20]!r}.", param="month")
    year, number = int(found[1]), int(found[2])
    first = dt.datetime(year, number, 1, tzinfo=dt.UTC)
    following = dt.datetime(year + number // 12, number % 12 + 1, 1, tzinfo=dt.UTC)
    return int(first.timestamp()), int(following.timestamp())


async def statement(db: Database, org_id: str, month: str) -> Statement:
    """The organization's statement for ``month``, from one consistent read of the ledger."""
    start, end = month_bounds(month)
    async with db.session() as session:
        org = await session.get(Organization, org_id)
    if org is None:
        raise NotFound("No such organization.", param="org_id", code="organization_not_found")
    async with db.engine.connect() as conn:
        rows = (await conn.execute(_movements_query(org_id, start, end))).all()
    opening = 0
    lines: dict[str, Movement] = {}
    charges: list[ChargeLine] = []
    counted = None
    for in_month, kind, inflow, model, count, amount, inp, cached, write, out, counter in rows:
        counted = int(counter)
        if not in_month:
            opening += int(amount)
        elif kind == "charge" and not inflow:
            charges.append(ChargeLine(model or UNRECORDED, int(count), int(inp), int(cached), int(write), int(out), int(amount)))
        else:
            name = _movement_kind(kind, bool(inflow))
            previous = lines.get(name, Movement(name, 0, 0))
            lines[name] = Movement(name, previous.count + int(count), previous.amount_nanos + int(amount))
    moved = sorted(lines.values(), key=lambda line: line.kind)
    done = Statement(
        org_id=org.id,
        org_name=org.name,
        month=month,
        start=start,
        end=end,
        opening_nanos=opening,
        credits=tuple(line for line in moved if line.kind in CREDIT_KINDS),
        charges=tuple(sorted(charges, key=lambda line: (line.amount_nanos, line.model))),
        refunds=tuple(line for line in moved if line.kind == "refund"),
        adjustments=tuple(line for line in moved if line.kind not in CREDIT_KINDS and line.kind != "refund"),
        closing_nanos=opening + sum(line.amount_nanos for line in moved) + sum(line.amount_nanos for line in charges),
    )
    if counted is not None and counted != done.closing_nanos:
        raise LedgerMismatch(f"The ledger of organization {org.id} does not add up for {month}.")
    by_user = await usage(db, org_id, start, end, "user")
    by_tag = await usage(db, org_id, start, end, "tag")
    return dataclasses.replace(done, by_user=tuple(by_user), by_tag=tuple(by_tag))


def _movement_kind(kind: str, inflow: bool) -> str:
    if kind in ("transfer", "charge"):  # a charge paid into the account: the organization is a payee
        return f"{kind}_{'in' if inflow else 'out'}"
    return kind


def _movements_query(org_id: str, start: int, end: int):
    """One statement, so one snapshot on SQLite and PostgreSQL alike: the account's entries up to
    ``end`` grouped by (before or within the month, kind, direction, model), each row carrying
    the account's running balance less every entry posted from ``end`` on."""
    account = customer(org_id)
    in_month = Posting.created_at >= start
    inflow = Entry.amount_nanos > 0
    is_charge = and_(in_month, Posting.kind == "charge")
    r = RequestRecord
    later_entry, later_posting = aliased(Entry), aliased(Posting)
    posted_later = (
        select(func.coalesce(func.sum(later_entry.amount_nanos), 0))
        .join(later_posting, later_posting.id == later_entry.posting_id)
        .where(later_entry.account_id == account, later_posting.created_at >= end)
        .correlate(None)
        .scalar_subquery()
    )
    running = select(Account.balance_nanos).where(Account.id == account).correlate(None).scalar_subquery()
    period = case((in_month, 1), else_=0).label("in_month")
    direction = case((inflow, 1), else_=0).label("inflow")
    model = case((is_charge, func.coalesce(r.model, "")), else_="").label("model")
    tokens = [
        func.coalesce(func.sum(column), 0)
        for column in (r.input_tokens, r.cached_input_tokens, r.cache_write_tokens, r.output_tokens)
    ]
    return (
        select(
            period,
            Posting.kind,
            direction,
            model,
            func.count(),
            func.coalesce(func.sum(Entry.amount_nanos), 0),
            *tokens,
            (func.coalesce(running, 0) - posted_later).label("counted"),
        )
        .select_from(Entry)
        .join(Posting, Posting.id == Entry.posting_id)
        .outerjoin(r, and_(is_charge, r.id == Posting.request_id, r.org_id == org_id))
        .where(Entry.account_id == account, Posting.created_at < end)
        .group_by(period, Posting.kind, direction, model)
    )


# --- renderings ------------------------------------------------------------------------------


def usd(amount: int) -> str:
    """Exact USD, at least to the cent: 12.50, -0.000123."""
    text = format_usd(Nanos(amount))
    whole, _, cents = text.partition(".")
    return f"{whole}.{cents.ljust(2, '0')}"


def _day(epoch_s: int) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).date().isoformat()


def to_json(done: Statement) -> dict[str, Any]:
    def money(name: str, amount: int) -> dict[str, Any]:
        return {f"{name}_usd": format_usd(Nanos(amount)), f"{name}_nanos": amount}

    def movement(line: Movement) -> dict[str, Any]:
        return {"kind": line.kind, "count": line.count, **money("amount", line.amount_nanos)}

    def breakdown(row: UsageRow) -> dict[str, Any]:
        return {
            "requests": row.requests,
            "input_tokens": row.input_tokens,
            "output_tokens": row.output_tokens,
            **money("amount", -row.cost_nanos),
        }

    return {
        "object": "statement",
        "organization_id": done.org_id,
        "organization_name": done.org_name,
        "month": done.month,
        "period_start": done.start,
        "period_end": done.end,
        "currency": "usd",
        **{key: value for name, amount in done.summary() for key, value in money(name, amount).items()},
        "credits": [movement(line) for line in done.credits],
        "charges": [
            {
                "model": line.model,
                "requests": line.requests,
                "input_tokens": line.input_tokens,
                "cached_input_tokens": line.cached_input_tokens,
                "cache_write_tokens": line.cache_write_tokens,
                "output_tokens": line.output_tokens,
                **money("amount", line.amount_nanos),
            }
            for line in done.charges
        ],
        "refunds": [movement(line) for line in done.refunds],
        "adjustments": [movement(line) for line in done.adjustments],
        "charges_by_user": [{"user": row.group or None, **breakdown(row)} for row in done.by_user],
        "charges_by_tag": [{"tag": row.group or None, **breakdown(row)} for row in done.by_tag],
    }


CSV_COLUMNS = [
    "section",
    "description",
    "count",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "amount_usd",
]


def to_csv(done: Statement) -> str:
    """A header block (field, value), a blank line, then the line items with a header row.
    Amounts are exact USD decimals; money into the balance is positive, out of it negative."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows(
        [
            ["statement", "Emporion credit statement"],
            ["organization", done.org_name],
            ["organization_id", done.org_id],
            ["month", done.month],
            ["period_start", _day(done.start)],
            ["period_end", _day(done.end - 1)],
            ["currency", "USD"],
        ]
    )
    writer.writerows([[f"{name}_usd", usd(amount)] for name, amount in done.summary()])
    writer.writerow([])
    writer.writerow(CSV_COLUMNS)
    for section, lines in (("credit", done.credits), ("refund", done.refunds), ("adjustment", done.adjustments)):
        writer.writerows([section, line.kind, line.count, "", "", "", "", usd(line.amount_nanos)] for line in lines)
    for charge in done.charges:
        writer.writerow(
            [
                "charge",
                charge.model,
                charge.requests,
                charge.input_tokens,
                charge.cached_input_tokens,
                charge.cache_write_tokens,
                charge.output_tokens,
                usd(charge.amount_nanos),
            ]
        )
    return buffer.getvalue()


async def render_pdf(done: Statement) -> bytes:
    """``to_pdf`` in a worker thread. fpdf2 is pure Python (about 5 ms a page, and its import the
    first time): rendered on the event loop, a statement of thousands of line items would stall
    every other request until it is done. In a thread the loop keeps serving; the render still
    takes its share of the GIL, so other requests slow down meanwhile, but none waits for it."""
    return await asyncio.to_thread(to_pdf, done)


def to_pdf(done: Statement) -> bytes:
    """One A4 page per ``LINES_PER_PAGE`` line items, in the core Helvetica font."""
    from fpdf import FPDF

    items = [
        (f"{line.kind} ({line.count})", "", usd(line.amount_nanos)) for line in (*done.credits, *done.refunds, *done.adjustments)
    ]
    for line in done.charges:
        prompt = line.input_tokens + line.cached_input_tokens + line.cache_write_tokens
        items.append((line.model, f"{line.requests} requests, {prompt} in, {line.output_tokens} out", usd(line.amount_nanos)))
    pages = [items[i : i + LINES_PER_PAGE] for i in range(0, len(items), LINES_PER_PAGE)] or [[]]
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(False)
    pdf.set_creator("Emporion")
    pdf.set_title(_latin1(f"Statement {done.month} {done.org_name}"))
    for number, page in enumerate(pages, 1):
        pdf.add_page()
        _pdf_header(pdf, done, number, len(pages))
        if number == 1:
            for name, amount in done.summary():
                _pdf_row(pdf, (name.replace("_", " ").capitalize(), "", f"${usd(amount)}"), bold=name.endswith("balance"))
            pdf.ln(4)
        _pdf_row(pdf, ("Line item", "Usage", "Amount (USD)"), bold=True)
        for item in page:
            _pdf_row(pdf, item)
    return bytes(pdf.output())


def _pdf_header(pdf, done: Statement, number: int, count: int) -> None:
    pdf.set_font("Helvetica", "B", 14)
    pdf.cell(0, 8, _latin1(done.org_name), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    pdf.cell(0, 5, _latin1(f"Organization {done.org_id}"), new_x="LMARGIN", new_y="NEXT")
    pdf.cell(
        0,
        5,
        f"Credit statement {done.month}: {_day(done.start)} to {_day(done.end - 1)} (UTC)   page {number} of {count}",
        new_x="LMARGIN",
        new_y="NEXT",
    )
    pdf.ln(4)


def _pdf_row(pdf, cells: tuple[str, str, str], bold: bool = False) -> None:
    pdf.set_font("Helvetica", "B" if bold else "", 9)
    description, detail, amount = cells
    pdf.cell(80, 5.5, _latin1(description)[:60], border="B")
    pdf.cell(65, 5.5, detail, border="B")
    pdf.cell(0, 5.5, amount, border="B", align="R", new_x="LMARGIN", new_y="NEXT")


def _latin1(text: str) -> str:
    """The core fonts know Latin-1 only; anything else prints as ``?``."""
    return text.encode("latin-1", "replace").decode("latin-1")
