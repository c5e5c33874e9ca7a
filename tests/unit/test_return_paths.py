"""The return path that names its message (VERP): short, lowercase letters and digits, signed, read
back strictly, with every key of the keyring."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.return_paths import TAG_LENGTH, read_token, return_path, token, token_in

KEY = "k" * 20 + "q3Vn0c2Jx8wT5m1KfYpR7hLzA9bE"
OLD = "an older key that signed reports still on their way"
ids = st.integers(min_value=1, max_value=2**63 - 1)


@given(outbox_id=ids)
def test_a_return_path_reads_back_to_its_row(outbox_id: int) -> None:
    address = return_path(outbox_id, KEY, "bounces", "bounces.greenleaf.example")
    local, _, domain = address.partition("@")
    assert domain == "bounces.greenleaf.example"
    assert re.fullmatch(r"bounces\+[a-z0-9]+", local)
    assert len(local) <= 64  # RFC 5321's limit on a local part
    found = token_in(address, "bounces", "bounces.greenleaf.example")
    assert found is not None and read_token(found, [KEY]) == outbox_id


def test_a_token_is_short_and_the_same_on_every_retry() -> None:
    assert token(42, KEY) == token(42, KEY)
    assert len(token(42, KEY)) == 2 + TAG_LENGTH  # "16" in base 36, then the 60-bit tag
    assert token(42, KEY) != token(43, KEY)
    assert token(42, KEY) != token(42, OLD)


@given(outbox_id=ids)
def test_a_token_folded_to_upper_case_by_an_mta_still_reads(outbox_id: int) -> None:
    assert read_token(token(outbox_id, KEY).upper(), [KEY]) == outbox_id


def test_tokens_signed_with_a_previous_key_still_read_and_unknown_keys_do_not() -> None:
    signed = token(7, OLD)
    assert read_token(signed, [KEY, OLD]) == 7
    assert read_token(signed, [KEY]) is None


@given(outbox_id=ids, position=st.integers(min_value=0), char=st.sampled_from("abcdefghijklmnopqrstuvwxyz234567"))
def test_a_changed_character_matches_no_message(outbox_id: int, position: int, char: str) -> None:
    good = token(outbox_id, KEY)
    at = position % len(good)
    forged = good[:at] + char + good[at + 1 :]
    if forged != good:
        assert read_token(forged, [KEY]) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0" + token(5, KEY),  # a leading zero: not how the id is written
        token(5, KEY) + "a",  # anything after the tag
        token(5, KEY)[:-1],  # a tag cut short
        token(5, KEY)[-TAG_LENGTH:],  # no id at all
        " " + token(5, KEY),
        token(5, KEY).replace(token(5, KEY)[-1], "1"),  # outside the tag's alphabet
        "５" + token(5, KEY)[1:],  # a digit of another script
    ],
)
def test_tokens_are_read_strictly(text: str) -> None:
    assert read_token(text, [KEY]) is None


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("bounces+abc@b.example", "abc"),
        ("<Bounces+abc@B.example.>", "abc"),
        ("bounces@b.example", None),
        ("bounces+@b.example", None),
        ("other+abc@b.example", None),
        ("bounces+abc@elsewhere.example", None),
        ("not an address", None),
    ],
)
def test_the_token_of_an_address_on_the_bounce_domain(address: str, expected: str | None) -> None:
    assert token_in(address, "bounces", "b.example") == expected


def test_outbox_ids_start_at_one() -> None:
    with pytest.raises(ValueError, match="1 or more"):
        token(0, KEY)
