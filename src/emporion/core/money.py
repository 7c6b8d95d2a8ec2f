"""Money: integer nano-USD (1e-9 USD), and the one rounding rule.

The rule: a charge is computed exactly in Decimal and rounded once, half up, to a whole nano-USD.
When a charge is split between parties (provider, operator, resellers), each share is the
difference of two rounded running totals, so the shares always add up to the rounded total.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import NewType

Nanos = NewType("Nanos", int)
NANOS_PER_USD = 1_000_000_000


def to_nanos(usd: Decimal) -> Nanos:
    """USD (exact Decimal) to nano-USD, rounded half up: the one rounding rule."""
    if not usd.is_finite():
        raise ValueError("an amount of money is a finite number")
    return Nanos(int((usd * NANOS_PER_USD).to_integral_value(rounding=ROUND_HALF_UP)))


def to_usd(amount: Nanos) -> Decimal:
    return Decimal(amount) / NANOS_PER_USD


def format_usd(amount: Nanos) -> str:
    """As OpenRouter writes costs: plain decimal notation, no exponent, no trailing zeros."""
    text = format(to_usd(amount).normalize(), "f")
    return "0" if text in ("-0", "0") else text
