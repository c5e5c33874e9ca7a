"""Which languages an outbox row is written in: a funnel's own, and a form's confirmation emails in
the languages of the funnel the form feeds."""

from __future__ import annotations

from engine.core.definition import Funnel
from engine.core.signup import feeds, outbox_languages


def funnel(fid: str, form: object, languages: dict[str, object] | None, event: str = "form_submitted") -> Funnel:
    data: dict[str, object] = {
        "id": fid,
        "name": fid,
        "entry": {"triggers": [{"event": event, "where": {"form": form}}]},
        "stages": [{"id": "s", "steps": [{"id": "w", "wait": "1d"}]}],
    }
    if languages is not None:
        data["languages"] = languages
    return Funnel.model_validate(data)


def test_a_form_is_in_the_languages_of_the_first_funnel_with_languages_it_feeds() -> None:
    one = funnel("plain", "signup", None)
    many = funnel("many", ["signup", "other"], {"default": "en-GB", "others": ["de", "fr"]})
    elsewhere = funnel("elsewhere", "signup", {"default": "es"}, event="signed_up")
    assert feeds(many, "other", "form_submitted") and not feeds(elsewhere, "signup", "form_submitted")
    assert outbox_languages([one, many, elsewhere], {"signup": "form_submitted", "nobody": "form_submitted"}) == {
        "many": ("en-GB", "de", "fr"),
        "elsewhere": ("es",),
        "form:signup": ("en-GB", "de", "fr"),
    }
