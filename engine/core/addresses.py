"""What an email address is here: the one normaliser every entry calls (the API, signed hooks, signup
forms, CSV imports, `funnel event` and the `funnel lead` commands), and the form the store keeps, finds
and hashes addresses in (the suppression list included). Pure: no IO.

An address is taken when it is one bare addr-spec the relay can be given as it is:

- surrounding whitespace is trimmed;
- no display name, angle brackets or list (`Ann <ann@example.com>`, `a@example.com, b@example.com`),
  no quoted local part, no domain literal (`ann@[192.0.2.1]`);
- the local part is ASCII: one that is not needs SMTPUTF8, which the engine never offers the relay, so
  it is refused here rather than failing at send;
- the domain goes to its ASCII form (IDNA 2008), so `idn@bücher.example` and
  `idn@xn--bcher-kva.example` are one lead;
- special-use names (RFC 6761 and after: `.test`, `.localhost`, `.local`, `.invalid`, `.onion`, `.arpa`)
  are refused everywhere alike; `example.com` and `.example` (RFC 2606) are taken, as the demo, the docs
  and the tests use them;
- the whole address is lower-cased, the local part included: nearly every provider treats local parts
  without case, and the stored leads and the suppression hashes have always been lower-case.

Syntax and IDNA are email-validator's, without its DNS checks.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

# RFC 5321 4.5.3.1.3: a path is at most 256 octets with its angle brackets.
MAX_LENGTH = 254

# A plain ASCII dot-atom local part (what nearly every real address is). email-validator takes all of
# these; what it spends its time on is the domain (IDNA), so each domain is checked once and only
# addresses outside this shape go through the whole validator (`funnel import` of a million rows).
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_NAMED = frozenset("<>")
_LISTED = frozenset(",;")


class AddressError(ValueError):
    """Text that is not one address the engine takes: `reason` says why, in words a user can act on."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"email {text!r} is not a valid address ({reason})")
        self.text = text
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Domain:
    unicode: str  # as email-validator normalises it, for its length rules
    ascii: str


def normalise(text: str) -> str:
    """The address as the engine keeps it; raises `AddressError` saying what is wrong."""
    value = text.strip()
    if not value:
        raise AddressError(text, "it is empty")
    if len(value) > MAX_LENGTH:
        raise AddressError(text, f"longer than the {MAX_LENGTH} characters an address may have")
    if not _NAMED.isdisjoint(value):
        raise AddressError(text, "a display name or angle brackets; give the bare address, e.g. ann@example.com")
    if not _LISTED.isdisjoint(value):
        raise AddressError(text, "more than one address, or a list; give one address")
    local, at, domain = value.rpartition("@")
    if at and len(local) <= 64 and _PLAIN_LOCAL.fullmatch(local):
        checked = _domain(domain)
        if checked is not None and _fits(value, local, checked):
            return f"{local.lower()}@{checked.ascii}"
    try:
        valid = validate_email(value, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        reason = str(exc)
        if "before the @-sign are not supported" in reason:
            reason += " A local part that is not ASCII needs SMTPUTF8, which the engine does not use."
        raise AddressError(text, reason) from None
    return f"{valid.local_part.lower()}@{valid.ascii_domain.lower()}"


def _fits(value: str, local: str, domain: _Domain) -> bool:
    """email-validator's length rules: the address as given, with its normalised domain, and in ASCII."""
    forms = (value, f"{local}@{domain.unicode}", f"{local}@{domain.ascii}")
    return all(len(form.encode()) <= MAX_LENGTH for form in forms)


@functools.lru_cache(maxsize=4096)
def _domain(domain: str) -> _Domain | None:
    """The domain's normalised forms if email-validator takes addresses there, else None."""
    try:
        valid = validate_email(f"a@{domain}", check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError:
        return None
    return _Domain(valid.domain, valid.ascii_domain.lower())


def spellings(text: str) -> tuple[str, ...]:
    """The ways one address may be written out (as given, as kept, with its domain in ASCII or in
    Unicode), for finding it in text someone else wrote: a relay's reply, an exception's message."""
    found = dict.fromkeys((text.strip(), lookup_key(text)))
    local, _, domain = lookup_key(text).rpartition("@")
    checked = _domain(domain) if local else None
    if checked is not None:
        found.update(dict.fromkeys((f"{local}@{checked.unicode}", f"{local}@{checked.ascii}")))
    return tuple(found)


def lookup_key(text: str) -> str:
    """The form an address is found and hashed under: `normalise(text)`, or, for text these rules refuse,
    the form the engine kept addresses in before them (trimmed, lower-cased). A row stored before the
    rules (a local part that needs SMTPUTF8, say) can so still be found, unsubscribed and erased, and its
    suppression hash still matches; only `normalise` may make a new lead."""
    try:
        return normalise(text)
    except AddressError:
        return text.strip().lower()
