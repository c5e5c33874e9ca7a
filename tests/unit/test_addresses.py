"""What an address is here (`engine.core.addresses`): the one normaliser every entry calls, checked against
email-validator's own verdict and on the shapes the security review used."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import example, given, settings

from engine.core.addresses import AddressError, lookup_key, normalise
from tests.strategies import address_texts

# --------------------------------------------------------------------------------------------------
# The rules, one example each
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_text", "kept"),
    [
        (" ERASED1@example.com ", "erased1@example.com"),  # trimmed, lower-cased
        ("\tAnn.Lee+News@Example.COM\n", "ann.lee+news@example.com"),
        ("idn@bücher.example", "idn@xn--bcher-kva.example"),  # the domain in its ASCII form
        ("IDN@XN--BCHER-KVA.EXAMPLE", "idn@xn--bcher-kva.example"),  # the same lead
        ("a@straße.example", "a@xn--strae-oqa.example"),  # IDNA 2008: ß is not ss
        ("a@ＥＸＡＭＰＬＥ.com", "a@example.com"),  # fullwidth letters in the domain map to ASCII
        ("sam@acme-packaging.example", "sam@acme-packaging.example"),  # RFC 2606 names: the demo's, the tests'
        ("zoe@example.com", "zoe@example.com"),
        ("o'neil@example.ie", "o'neil@example.ie"),
    ],
)
def test_an_address_is_kept_in_one_form(given_text: str, kept: str) -> None:
    assert normalise(given_text) == kept


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Erased <erased1@example.com>", "display name"),
        ("<erased1@example.com>", "display name"),
        ("ERASED1@example.com,", "one address"),
        ("a@example.com, b@example.com", "one address"),
        ("a@example.com;b@example.com", "one address"),
        ("josé@example.com", "SMTPUTF8"),  # the relay is never offered SMTPUTF8
        ("ｆｕｌｌ@example.com", "SMTPUTF8"),
        ("x@example.test", "special-use"),  # RFC 6761 names, refused at every entry alike
        ("x@mail.localhost", "special-use"),
        ("x@printer.local", "special-use"),
        ("x@nowhere.invalid", "special-use"),
        ('"ann lee"@example.com', "Quoting"),
        ("ann@[192.0.2.1]", "bracketed IP address"),
        ("bob@", "after the @-sign"),
        ("", "empty"),
        ("   ", "empty"),
        ("x@example.com\r\nBcc: y@example.com", "invalid characters"),
        ("a" * 300 + "@example.com", "longer than"),
    ],
)
def test_what_is_not_one_bare_address_is_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(AddressError) as refused:
        normalise(text)
    assert why in refused.value.reason
    assert str(refused.value) == f"email {text!r} is not a valid address ({refused.value.reason})"
    assert isinstance(refused.value, ValueError)  # callers that catch ValueError keep working


# --------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------

texts = address_texts()


def _email_validators_verdict(text: str) -> str | None:
    """What email-validator alone says, with the engine's rules: one bare ASCII-local addr-spec, no
    special-use name, the domain in ASCII, everything lower-cased."""
    try:
        checked = validate_email(text.strip(), check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        return None
    return f"{checked.local_part.lower()}@{checked.ascii_domain.lower()}"


def _outcome(text: str) -> str | None:
    try:
        return normalise(text)
    except AddressError:
        return None


@settings(max_examples=500, deadline=None)
@given(texts)
@example("ann@bücher.example")
@example("x" * 64 + "@" + "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + ".example")
@example("x" * 64 + "@" + "пример." * 20 + "example")
def test_the_fast_path_agrees_with_email_validator(text: str) -> None:
    assert _outcome(text) == _email_validators_verdict(text)


@settings(max_examples=500, deadline=None)
@given(texts)
def test_a_kept_address_is_ascii_lower_case_and_its_own_normal_form(text: str) -> None:
    kept = _outcome(text)
    if kept is None:
        return
    assert kept.isascii() and kept == kept.lower() and kept.count("@") == 1
    assert not any(c.isspace() for c in kept)
    assert normalise(kept) == kept
    assert lookup_key(text) == kept


def test_the_lookup_key_of_a_row_kept_from_before_the_rules_is_the_old_form() -> None:
    # A lead stored before these rules (e.g. with a non-ASCII local part, which mail can never reach)
    # can still be found, unsubscribed and erased; only creating a lead requires `normalise`.
    assert lookup_key(" José@Example.com ") == "josé@example.com"
    assert lookup_key("Erased <erased1@example.com>") == "erased <erased1@example.com>"
