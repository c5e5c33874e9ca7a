"""`funnel validate` for the forms in the settings: each form's page and confirmation email exist and
compile, and some funnel enters on the event the form emits (a form feeding no funnel is a typo)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from jinja2 import TemplateNotFound, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from engine.core import journey
from engine.core.definition import Funnel
from engine.mail.folder_loader import FolderLoader, OutsideFolder
from engine.mail.templates import TemplateError as EmailTemplateError
from engine.mail.templates import TemplateLibrary, sample_context
from engine.settings import Settings

_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def check_forms(settings: Settings, funnels: Sequence[Funnel], templates: TemplateLibrary) -> list[str]:
    """One message per problem, naming the form and the key."""
    errors: list[str] = []
    loader = FolderLoader(settings.pages_dir)
    pages = SandboxedEnvironment(loader=loader, autoescape=True)
    for form_id, form in sorted(settings.forms.items()):
        where = f"forms.{form_id}"
        if form.page is not None:
            try:
                pages.get_template(form.page)
            except TemplateNotFound:
                errors.append(f"{where}.page: no such page {loader.display(form.page)}")
            except TemplateSyntaxError as exc:
                errors.append(f"{where}.page: {loader.display(form.page)}:{exc.lineno}: {exc.message}")
            except OutsideFolder as exc:
                found = loader.locate(exc, exc.__traceback__)
                errors.append(f"{where}.page: {found.path}:{found.line}: {found.message}")
            else:
                errors.extend(
                    f"{where}.page: {found.path}:{found.line}: {found.message}"
                    for found in loader.outside_references(pages, form.page)
                )
        # Every form may send it: a post about an address that already has a lead, single opt-in or
        # not, is only a request until its owner follows the link.
        if not templates.exists(form.confirm_template):
            errors.append(
                f"{where}.confirm_template: no email template {form.confirm_template!r} in "
                f"{templates.emails_dir.as_posix()}"
            )
        else:
            try:
                rendered = templates.render(form.confirm_template, sample_context())
            except EmailTemplateError as exc:
                errors.append(f"{where}.confirm_template: {exc}")
            else:
                if "example.com/confirm/" not in rendered.html:
                    errors.append(
                        f"{where}.confirm_template: the email never shows {{{{ confirm_url }}}}, "
                        "so the lead cannot confirm"
                    )
        event = journey.Event(id="check", name=form.event, at=_EPOCH, properties={"form": form_id})
        lead = journey.Lead(id="check@example.com")
        if not any(journey.entry_trigger(f, lead, event) for f in funnels):
            errors.append(
                f"{where}: no funnel enters on event {form.event!r} with form {form_id!r}; "
                "add an entry trigger like `- event: " + form.event + "` with `where: {form: " + form_id + "}`"
            )
    return errors
