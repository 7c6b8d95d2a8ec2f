"""Property tests of the money rules: exact shares, no negative share, cost never falls as usage grows."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emporion.core.money import NANOS_PER_USD, format_usd, to_nanos
from emporion.core.prices import Margin, Price, charge
from emporion.core.usage import Usage

tokens = st.integers(min_value=0, max_value=10**7)
per_token = st.decimals(min_value=0, max_value=Decimal("0.001"), places=12, allow_nan=False, allow_infinity=False)
percent = st.decimals(min_value=0, max_value=300, places=3, allow_nan=False, allow_infinity=False)
fee = st.decimals(min_value=0, max_value=Decimal("0.01"), places=9, allow_nan=False, allow_infinity=False)
usages = st.builds(Usage, tokens, tokens, tokens, tokens)
prices = st.builds(Price, prompt=per_token, completion=per_token, cached_prompt=per_token, cache_write=per_token, request=fee)
margins = st.builds(Margin, percent=percent, fixed=fee)


@given(usages, prices, margins, st.lists(margins, max_size=3))
def test_shares_add_up_exactly_and_none_is_negative(usage, price, margin, markups):
    c = charge(usage, price, margin, markups)
    assert c.provider + c.operator + sum(c.resellers) == c.total
    assert c.provider >= 0 and c.operator >= 0 and all(share >= 0 for share in c.resellers)
    exact = price.cost(usage)
    for m in [margin, *markups]:
        exact = m.apply(exact)
    assert abs(Decimal(c.total) - exact * NANOS_PER_USD) <= Decimal("0.5")


@given(
    usages,
    prices,
    margins,
    st.sampled_from(["input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens"]),
    tokens,
)
def test_cost_never_decreases_as_tokens_increase(usage, price, margin, field, more):
    bigger = Usage(**{**{f: getattr(usage, f) for f in usage.__slots__}, field: getattr(usage, field) + more})
    assert charge(bigger, price, margin).total >= charge(usage, price, margin).total


def test_rounding_rule_is_half_up_to_the_nano():
    assert to_nanos(Decimal("0.0000000005")) == 1
    assert to_nanos(Decimal("0.0000000004999")) == 0
    assert to_nanos(Decimal("1.5E-9")) == 2
    price = Price(prompt=Decimal("0.00000015"), completion=Decimal("0.0000006"))
    c = charge(Usage(input_tokens=1000, output_tokens=500), price, Margin(percent=Decimal(5)))
    assert (c.provider, c.operator, c.total) == (450_000, 22_500, 472_500)
    assert format_usd(c.total) == "0.0004725" and format_usd(0) == "0"


def test_negative_margins_are_refused():
    with pytest.raises(ValueError):
        Margin(percent=Decimal(-1))
