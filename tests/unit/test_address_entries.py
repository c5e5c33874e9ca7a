"""Every way an address comes in takes it the same way: the same random text, given to each entry as
that entry's adapter reads it, is accepted by all of them as the same address or refused by all.

Each entry's end-to-end proof that it really goes through this reading is beside its own tests:
tests/http/test_api.py (events and leads), tests/http/test_hooks.py, tests/http/test_forms.py,
tests/cli/test_import.py, tests/acceptance/test_cli_addresses.py (`funnel event`, `funnel lead ...`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable

import click
import typer
from hypothesis import example, given, settings
from pydantic import TypeAdapter, ValidationError

from engine.cli.common import lead_address
from engine.core.addresses import AddressError, normalise
from engine.http import forms
from engine.http.api_v1 import Address, EventIn, EventsBody
from engine.runtime.importer import BadRow, RowReader
from engine.settings import FormSettings
from tests.strategies import address_texts

_PATH = TypeAdapter(Address)
_BODY: TypeAdapter[object] = TypeAdapter(EventsBody)


def _event(email: str) -> dict[str, object]:
    return {"id": "order-1", "type": "order_completed", "email": email}


def the_normaliser(text: str) -> str | None:
    try:
        return normalise(text)
    except AddressError:
        return None


def api_event(text: str) -> str | None:  # POST /v1/events
    try:
        return EventIn.model_validate(_event(text)).email
    except ValidationError:
        return None


def api_path(text: str) -> str | None:  # PUT, GET and DELETE /v1/leads/{email}
    try:
        return _PATH.validate_python(text)
    except ValidationError:
        return None


def hook_payload(text: str) -> str | None:  # POST /hooks/{source}, a batch of one
    try:
        (item,) = _BODY.validate_python([_event(text)])  # type: ignore[misc]
    except ValidationError:
        return None
    assert isinstance(item, EventIn)
    return item.email


def signup_form(text: str) -> str | None:  # POST /forms/{id}
    address, errors = forms._check({"email": text, "consent": "yes"}, FormSettings())
    return None if "email" in errors else address


def csv_row(text: str) -> str | None:  # funnel import
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["email", "first_name"])
    writer.writerow([text, "Ann"])
    items = list(RowReader(io.BytesIO(out.getvalue().encode("utf-8")), "leads.csv"))
    assert len(items) == 1
    (item,) = items
    return None if isinstance(item, BadRow) else item.email


def command_line(text: str) -> str | None:  # funnel event, funnel lead enroll|show|export|forget
    try:
        return lead_address(text)
    except (typer.Exit, click.exceptions.Exit):
        return None


ENTRIES: dict[str, Callable[[str], str | None]] = {
    "POST /v1/events": api_event,
    "/v1/leads/{email}": api_path,
    "POST /hooks/{source}": hook_payload,
    "POST /forms/{id}": signup_form,
    "funnel import": csv_row,
    "funnel event / lead": command_line,
}


@settings(max_examples=400, deadline=None)
@given(address_texts())
@example(" ERASED1@example.com,")
@example("Erased <erased1@example.com>")
@example(" Idn@Bücher.Example ")
@example("x@example.test")
@example("josé@example.com")
@example(" " * 300 + "ann@example.com")
def test_every_entry_accepts_and_normalises_an_address_alike(text: str) -> None:
    expected = the_normaliser(text)
    found = {name: read(text) for name, read in ENTRIES.items()}
    assert found == dict.fromkeys(ENTRIES, expected)
