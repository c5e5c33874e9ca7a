"""Email templates: Markdown or HTML with Jinja2 in `emails/`, compiled in a sandbox and rendered to
a subject, an HTML part with inlined CSS, a plain-text part and the list of named links.

A template is `emails/<name>.md` or `emails/<name>.html`, with YAML front matter between `---` lines;
an optional `emails/<name>.txt` is its hand-written plain-text part. The body is rendered first and
placed in a layout (`emails/_layouts/<layout>.html`) through its `{{ content }}` slot; partials in
`emails/_partials/` are included with `{% include %}`. Sending (MIME, SMTP) is not done here.

A translation of `emails/DIR/NAME.md` is `emails/DIR/LANG/NAME.md`, LANG a BCP 47 tag in canonical case
(`de`, `fr-CA`): a file in a folder named like a language tag, beside the template it translates, is a
translation, not a template of its own.
`pick` chooses the one a lead reads (engine.core.languages: its language's lookup chain, among the
languages the funnel declares).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import css_inline
import jinja2
from markupsafe import Markup, escape
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from selectolax.lexbor import LexborHTMLParser, LexborNode

from engine.core.definition import ID_PATTERN, TEMPLATE_PATTERN
from engine.core.languages import LanguageError, canonical, first_available, lookup_chain
from engine.core.yamlfile import YamlSyntaxError, read_yaml
from engine.mail.folder_loader import FolderLoader, OutsideFolder, template_frame
from engine.mail.localized import FILTERS as LOCALIZED_FILTERS
from engine.mail.markdown import RAW_HTML_OMITTED, Markdown, Values
from engine.mail.mime import mailboxes
from engine.mail.template_bounds import MAX_TEXT_CHARS, BoundedSandbox, check_written, render_budget, too_much_written

BODY_SUFFIXES = (".md", ".html")
_UNSUBSCRIBE_SLOT = "{{ unsubscribe_url }}"
LAYOUTS_DIR = "_layouts"


class TemplateError(Exception):
    """A problem a template author can fix, located as `emails/<file>:<line>: <message>`."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line
        self.message = message


class FrontMatter(BaseModel):
    """The `---` block at the top of an email template."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    subject: str = Field(min_length=1, description="Subject line; Jinja2 allowed.")
    preheader: str | None = Field(default=None, description="Inbox preview text; Jinja2 allowed.")
    from_: str | None = Field(
        default=None,
        alias="from",
        description="Overrides the sender: an address, optionally with a display name (`Name <address>`).",
    )
    reply_to: str | None = Field(default=None, description="Overrides the Reply-To address.")
    layout: str = Field(default="base", pattern=r"^[a-z0-9][a-z0-9_-]*$", description="`emails/_layouts/<name>.html`.")

    @field_validator("subject", "preheader", "from_", "reply_to")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and ("\r" in value or "\n" in value.strip()):
            raise ValueError("expected a single line (a header value cannot contain line breaks)")
        return value.strip() if value is not None else None

    @field_validator("from_", "reply_to")
    @classmethod
    def _addresses(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Checked here, so `funnel validate` names the template, rather than every send failing later.
        if value is None:
            return None
        many = info.field_name == "reply_to"  # Reply-To may name several mailboxes; From names one
        example = "news@example.com or Greenleaf <news@example.com>"
        expected = f"expected {'addresses' if many else 'one address'}, such as {example}"
        try:
            found = mailboxes(value)
        except ValueError as exc:
            raise ValueError(f"{exc}; {expected}") from None
        if len(found) != 1 and not many:
            raise ValueError(f"{value!r}: {expected}")
        return value


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sends the funnel's emails; the postal address is required in every marketing email."""

    name: str
    postal_address: str
    website: str


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    template: str
    subject: str
    preheader: str
    html: str
    text: str
    links: tuple[tuple[str, str], ...]  # (name, url) in order of first use; click tracking wraps these
    from_: str | None = None
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class EmailTemplate:
    """One parsed and compiled template. `source` is the body file; `text_source` the optional .txt."""

    name: str
    source: str  # display path, e.g. `emails/lead-magnet/report-delivery.md`
    kind: str  # "md" or "html"
    front: FrontMatter
    front_lines: Mapping[str, int]  # front matter key -> line in the file
    body: jinja2.Template
    subject: jinja2.Template
    preheader: jinja2.Template | None
    layout: jinja2.Template
    text: jinja2.Template | None


# --------------------------------------------------------------------------------------------------
# What templates see
# --------------------------------------------------------------------------------------------------


class Record(Mapping[str, Any]):
    """A read-only bag of fields (`lead`, `sender`, `funnel`) that knows its own name, so a missing
    field is reported as `lead.first_name`, not as a Python type. Empty values count as missing,
    which makes `lead.first_name | default("there")` cover blanks too."""

    def __init__(self, label: str, fields: Mapping[str, Any]) -> None:
        self._label = label
        self._fields = {k: v for k, v in fields.items() if v is not None and v != ""}

    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        return f"<{self._label}>"


class TrustedURL(str):
    """A URL the engine or the template author chose (not lead data): Markdown reads it as a URL."""

    __slots__ = ()


def lead_fields(email: str, attributes: Mapping[str, Any], language: str | None = None) -> dict[str, Any]:
    """The `lead` a template sees: its email, its language (a BCP 47 tag, when it has one) and its
    attributes side by side (`lead.company`)."""
    fields = {**attributes, "email": email}
    if language is not None:
        fields["language"] = language
    return fields


def sample_context(sender: Sender | None = None) -> dict[str, Any]:
    """A context for previews and checks, with a lead who has every usual field."""
    return {
        "lead": lead_fields(
            "alex@example.com",
            {"first_name": "Alex", "last_name": "Morgan", "company": "Example Ltd", "employees": 40},
        ),
        "sender": sender or Sender("Example Sender", "1 Example Street, London EC1A 1AA", "https://example.com"),
        "funnel": {"id": "example", "name": "Example funnel"},
        "unsubscribe_url": "https://example.com/u/sample-token",
        "preferences_url": "https://example.com/p/sample-token",
        "confirm_url": "https://example.com/confirm/sample-token",
        "now": datetime(2026, 3, 14, 17, 5, tzinfo=UTC),
    }


_LINK_NAME = re.compile(ID_PATTERN)
_LINK_URL = re.compile(r"^(https?://|mailto:)\S+$")


class _LinkRecorder:
    """The `link(name, url)` function of one rendering: returns the URL and remembers it by name."""

    def __init__(self, track: Callable[[str, str], str] | None = None) -> None:
        self.links: dict[str, str] = {}
        self.track = track

    def __call__(self, name: str, url: str) -> TrustedURL:
        if not isinstance(name, str) or not _LINK_NAME.fullmatch(name):
            raise ValueError(f"link name must be lowercase kebab-case like 'book-call', found {name!r}")
        if not isinstance(url, str) or not _LINK_URL.match(url):
            raise ValueError(f"link {name!r} must point to an http(s) or mailto URL, found {url!r}")
        known = self.links.setdefault(name, url)
        if known != url:
            raise ValueError(f"link {name!r} is used for two URLs: {known} and {url}")
        # Click tracking wraps web links in a signed redirect; mailto links stay as they are.
        if self.track is not None and not url.startswith("mailto:"):
            return TrustedURL(self.track(name, url))
        return TrustedURL(url)


# --------------------------------------------------------------------------------------------------
# The sandbox
# --------------------------------------------------------------------------------------------------

# The values of the Markdown body being rendered (see engine.mail.markdown), None outside one.
_MARKDOWN_VALUES: ContextVar[Values | None] = ContextVar("markdown_values", default=None)


@jinja2.pass_context
def _finalize(context: jinja2.runtime.Context, value: Any) -> Any:
    check_written(value)  # a list of long texts is short in memory and long as text
    # HTML templates are autoescaped by Jinja2. In a Markdown body each value becomes a placeholder,
    # filled in after the Markdown is rendered, so lead data is text wherever it stands; markup
    # (a macro's output) is Markdown the author wrote.
    if not context.name or not context.name.endswith(".md") or isinstance(value, Markup):
        return value
    values = _MARKDOWN_VALUES.get()
    if values is None:  # a Markdown partial included in an HTML template: its text is HTML there
        return escape(value)
    placeholder = values.url(value) if isinstance(value, TrustedURL) else values.word(str(value))
    if values.size > MAX_TEXT_CHARS:  # the values are written out with the Markdown, after it
        raise too_much_written()
    return placeholder


class _Undefined(jinja2.StrictUndefined):
    @property
    def _undefined_message(self) -> str:
        obj = self._undefined_obj
        if self._undefined_hint is None and isinstance(obj, Record):
            return (
                f"{obj._label}.{self._undefined_name} has no value; give it a fallback, e.g. "
                f'{{{{ {obj._label}.{self._undefined_name} | default("...") }}}}'
            )
        return str(super()._undefined_message)


class _Sandbox(BoundedSandbox):
    """The sandbox every email template renders in (engine.mail.template_bounds says what it bounds)."""


class _Loader(FolderLoader):
    """Loads bodies with their front matter replaced by blank lines, so Jinja2's line numbers are the
    file's. Virtual names `<file>#subject` and `<file>#preheader` hold front matter values, placed on
    their own line for the same reason. Only files inside the emails folder (see FolderLoader)."""

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        file, _, field = template.partition("#")
        text, display, uptodate = super().get_source(environment, file)
        if field:
            parsed = _split_front_matter(text, display)
            value = getattr(parsed[0], field)
            source = "\n" * (parsed[1][field] - 1) + value
        elif file.endswith(BODY_SUFFIXES) and not file.startswith(("_layouts/", "_partials/")):
            source = _blank_front_matter(text)
        else:
            source = text
        return source, display, uptodate


# --------------------------------------------------------------------------------------------------
# Front matter
# --------------------------------------------------------------------------------------------------

_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*\r?$\n?", re.DOTALL | re.MULTILINE)


def _is_language_folder(part: str) -> bool:
    # Only a tag written exactly in canonical case (`de`, `fr-CA`), so `FR` is an ordinary folder.
    try:
        return canonical(part) == part
    except LanguageError:
        return False


def _untranslated(name: str) -> str:
    """`name` without its language folder, to check the rest against the template name pattern."""
    parts = name.split("/")
    if len(parts) > 1 and _is_language_folder(parts[-2]):
        del parts[-2]
    return "/".join(parts)


def _blank_front_matter(text: str) -> str:
    match = _FRONT.match(text)
    if match is None:
        return text
    return "\n" * match.group(0).count("\n") + text[match.end() :]


def _split_front_matter(text: str, display: str) -> tuple[FrontMatter, dict[str, int]]:
    match = _FRONT.match(text)
    if match is None:
        raise TemplateError(display, 1, "expected front matter between '---' lines, with at least a subject")
    try:
        doc = read_yaml(Path(display), "\n" + match.group(1))  # the leading newline stands for '---'
    except YamlSyntaxError as exc:
        raise TemplateError(display, exc.position.line, exc.message) from None
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise TemplateError(display, 2, "expected front matter keys such as 'subject: ...'")
    lines = {("from_" if k == "from" else str(k)): doc.key_position((k,)).line for k in data}
    try:
        front = FrontMatter.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        line = doc.key_position(loc).line if loc else 1
        key = ".".join(str(p) for p in loc)
        if error["type"] == "extra_forbidden":
            known = ", ".join(f.alias or k for k, f in FrontMatter.model_fields.items())
            message = f"unknown front matter key '{key}' (known keys: {known})"
        elif error["type"] == "missing":
            message = f"front matter needs '{key}'"
        else:
            message = f"front matter '{key}': {error['msg']}"
        raise TemplateError(display, line, message) from None
    return front, lines


# --------------------------------------------------------------------------------------------------
# The library
# --------------------------------------------------------------------------------------------------


class TemplateLibrary:
    """The templates of one `emails/` folder. Loading is cached; rendering is safe to repeat."""

    def __init__(self, emails_dir: Path) -> None:
        self.emails_dir = emails_dir
        self.loader = _Loader(emails_dir)
        self._cache: dict[str, EmailTemplate] = {}
        # Which translations each template has, per funnel's languages: found once, like the templates,
        # so that choosing one costs no file check per email.
        self._translations: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
        self._env = _Sandbox(
            loader=self.loader,
            # Subjects and preheaders (`#` names) are header text, not HTML.
            autoescape=lambda name: bool(name) and "#" not in name and name.endswith(".html"),
            undefined=_Undefined,
            finalize=_finalize,
            # A library keeps what it loaded (see `load`), partials included: no file checks per render.
            auto_reload=False,
            keep_trailing_newline=True,
        )
        # Dates, numbers and money in the reader's language (engine.mail.localized: the context values they read).
        self._env.filters.update(LOCALIZED_FILTERS)
        self._markdown = Markdown()
        self._inliner = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True)

    def display(self, relative: str) -> str:
        return self.loader.display(relative)

    # -- discovery -----------------------------------------------------------------------------

    def names(self) -> list[str]:
        if not self.emails_dir.is_dir():
            return []
        found = set()
        for path in self.emails_dir.rglob("*"):
            rel = path.relative_to(self.emails_dir)
            if path.suffix in BODY_SUFFIXES and path.is_file() and not rel.parts[0].startswith("_"):
                found.add(rel.with_suffix("").as_posix())
        return sorted(name for name in found if self.original(name) is None)

    def original(self, name: str) -> str | None:
        """The template `name` translates, when it is a translation: in a folder named like a language
        tag (in canonical case) beside the template it translates. Otherwise None (a folder `faq/` with
        no `faq.md`-style sibling is not mistaken for Faroese)."""
        parts = name.split("/")
        if len(parts) < 2 or not _is_language_folder(parts[-2]):
            return None
        del parts[-2]
        base = "/".join(parts)
        return base if self._body_file(base) is not None else None

    def exists(self, name: str) -> bool:
        return self._body_file(name) is not None

    # -- translations --------------------------------------------------------------------------

    @staticmethod
    def translation(name: str, language: str) -> str:
        """The name of `name`'s translation into `language` (which may not exist)."""
        folder, _, file = name.rpartition("/")
        return f"{folder}/{language}/{file}" if folder else f"{language}/{file}"

    def translated_into(self, name: str, languages: Sequence[str]) -> list[str]:
        """Those of `languages` that `name` has a translation into, in their order."""
        return [lang for lang in languages if self.exists(self.translation(name, lang))]

    def pick(self, name: str, language: str | None, languages: Sequence[str]) -> tuple[str, str]:
        """(the template, its language) a lead whose language is `language` reads for `name`, where
        `languages` are the funnel's, its default first: the first of the lead's lookup chain that
        `name` exists in; the default template when none is."""
        default = languages[0] if languages else ""
        if not language or not languages:
            return name, default
        key = (name, tuple(languages))
        have = self._translations.get(key)
        if have is None:
            have = self._translations[key] = (default, *self.translated_into(name, languages[1:]))
        chosen = first_available(language, default, have)
        return (name if chosen == default else self.translation(name, chosen)), chosen

    def tried(self, name: str, language: str, languages: Sequence[str]) -> list[tuple[str, str | None]]:
        """What `pick` goes through for a lead of `language`: each language of its lookup chain, in order,
        with its file (as errors name it; None: no file), up to the one it takes, last. A file in a
        language not among `languages` (the default first) is passed over, as `pick` passes it over."""
        default = languages[0]
        out: list[tuple[str, str | None]] = []
        for candidate in lookup_chain(language, default):
            found = self._body_file(name if candidate == default else self.translation(name, candidate))
            out.append((candidate, self.display(found) if found else None))
            if found and candidate in languages:
                break
        return out

    def language_of(self, name: str) -> str | None:
        """The language a translation is in (its folder); None for a template in its default language.
        Templates, layouts and partials read it as `email_language` (the render path may give the
        funnel's default for the latter), e.g. to include `_partials/<language>/footer.html`."""
        return name.split("/")[-2] if self.original(name) is not None else None

    def _body_file(self, name: str) -> str | None:
        if not re.fullmatch(TEMPLATE_PATTERN, _untranslated(name)):
            return None
        for suffix in BODY_SUFFIXES:
            if (self.emails_dir / f"{name}{suffix}").is_file():
                return f"{name}{suffix}"
        return None

    # -- loading -------------------------------------------------------------------------------

    def load(self, name: str) -> EmailTemplate:
        cached = self._cache.get(name)
        if cached is not None:
            return cached
        file = self._body_file(name)
        if file is None:
            raise TemplateError(self.display(f"{name}.md"), 1, f"no template '{name}' (.md or .html)")
        others = [f"{name}{s}" for s in BODY_SUFFIXES if f"{name}{s}" != file]
        if any((self.emails_dir / o).is_file() for o in others):
            raise TemplateError(self.display(file), 1, f"template '{name}' exists as both .md and .html")
        display = self.display(file)
        with self._located(display, {}):
            text = self.loader.read(file)
        front, lines = _split_front_matter(text, display)
        layout_file = f"{LAYOUTS_DIR}/{front.layout}.html"
        if not (self.emails_dir / layout_file).is_file():
            raise TemplateError(
                display,
                lines.get("layout", 1),
                f"layout '{front.layout}' not found ({self.display(layout_file)})",
            )
        text_file = f"{name}.txt"
        with self._located(display, lines):
            template = EmailTemplate(
                name=name,
                source=display,
                kind=file.rpartition(".")[2],
                front=front,
                front_lines=lines,
                body=self._env.get_template(file),
                subject=self._env.get_template(f"{file}#subject"),
                preheader=self._env.get_template(f"{file}#preheader") if front.preheader else None,
                layout=self._env.get_template(layout_file),
                text=self._env.get_template(text_file) if (self.emails_dir / text_file).is_file() else None,
            )
        self._cache[name] = template
        return template

    def subject(self, name: str) -> str:
        """The subject as written (Jinja2 unrendered), for timelines and listings."""
        return self.load(name).front.subject

    # -- rendering -----------------------------------------------------------------------------

    def render(
        self, name: str, context: Mapping[str, Any], track: Callable[[str, str], str] | None = None
    ) -> RenderedEmail:
        """`track(name, url)`, when given, makes the URL each `link()` puts in the email (a click redirect);
        `RenderedEmail.links` keeps the original URLs."""
        template = self.load(name)
        recorder = _LinkRecorder(track)
        values = _template_values({"email_language": self.language_of(name), **context}, recorder)
        with self._located(template.source, template.front_lines), render_budget():
            subject = _one_line(template.subject.render(values))
            preheader = _one_line(template.preheader.render(values)) if template.preheader else ""
            if template.kind == "md":
                content = self._markdown_body(template, values)
            else:
                content = template.body.render(values).strip()
            # The body is already safe: autoescaped by Jinja2, or escaped by the Markdown renderer.
            body_html = Markup(content)  # noqa: S704
            page = template.layout.render({**values, "subject": subject, "preheader": preheader, "content": body_html})
            text = template.text.render(values).strip() + "\n" if template.text else html_to_text(page)
        return RenderedEmail(
            template=name,
            subject=subject,
            preheader=preheader,
            html=self._inliner.inline(page),
            text=text,
            links=tuple(recorder.links.items()),
            from_=template.front.from_,
            reply_to=template.front.reply_to,
        )

    def _markdown_body(self, template: EmailTemplate, values: dict[str, Any]) -> str:
        placed = self._markdown.values()
        reset = _MARKDOWN_VALUES.set(placed)
        try:
            text = template.body.render(values)
        finally:
            _MARKDOWN_VALUES.reset(reset)
        return self._markdown.render(text, placed)

    def render_subject(self, name: str, context: Mapping[str, Any]) -> str:
        """The subject alone, as the lead of `context` reads it (a timeline's line), rendered under the
        same bounds as the whole email."""
        template = self.load(name)
        values = _template_values({"email_language": self.language_of(name), **context}, _LinkRecorder())
        with self._located(template.source, template.front_lines), render_budget():
            return _one_line(template.subject.render(values))

    def check(self, name: str, sender: Sender | None = None) -> list[TemplateError]:
        """Every problem found by compiling the template and rendering it for two sample leads: one
        with only an email (a field used without a fallback is an error) and one with every usual field."""
        try:
            loaded = self.load(name)
        except TemplateError as exc:
            return [exc]
        full = sample_context(sender)
        bare = {**full, "lead": lead_fields(full["lead"]["email"], {})}
        language = self.language_of(name)
        if language is not None:  # whoever reads a translation has a language
            full["lead"] = {**full["lead"], "language": language}
            bare["lead"] = {**bare["lead"], "language": language}
        errors: dict[str, TemplateError] = {}
        # Includes behind an `{% if %}` that the sample leads do not reach are checked too.
        parts = (loaded.body, loaded.subject, loaded.preheader, loaded.layout, loaded.text)
        files = [t.name for t in parts if t is not None and t.name]
        for reference in (r for file in files for r in self.loader.outside_references(self._env, file)):
            outside = TemplateError(reference.path, reference.line, reference.message)
            errors.setdefault(str(outside), outside)
        for context in (bare, full):
            try:
                rendered = self.render(name, context)
            except TemplateError as exc:
                errors.setdefault(str(exc), exc)
                continue
            template = self.load(name)
            found = [
                TemplateError(template.source, 1, f"the {part} part has no unsubscribe link ({_UNSUBSCRIBE_SLOT})")
                for part, body in (("HTML", rendered.html), ("plain-text", rendered.text))
                if full["unsubscribe_url"] not in body
            ]
            if template.kind == "md" and RAW_HTML_OMITTED in rendered.html:
                found.append(self._raw_html_error(template))
            for error in found:
                errors.setdefault(str(error), error)
        return list(errors.values())

    def _raw_html_error(self, template: EmailTemplate) -> TemplateError:
        # The line of the first thing that looks like a tag; line 1 when it came from an included partial.
        text = _blank_front_matter(self.loader.read(f"{template.name}.md"))
        tag = _HTML_TAG.search(text)
        line = text.count("\n", 0, tag.start()) + 1 if tag else 1
        return TemplateError(
            template.source, line, "raw HTML is left out of Markdown emails; use Markdown, or write an .html email"
        )

    def _located(self, display: str, lines: Mapping[str, int]) -> _Locator:
        return _Locator(self, display, lines)


class _Locator:
    """Turns any failure inside Jinja2 into a TemplateError at the template file and line."""

    def __init__(self, library: TemplateLibrary, display: str, lines: Mapping[str, int]) -> None:
        self.library = library
        self.display = display
        self.lines = lines

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None or isinstance(exc, TemplateError) or not isinstance(exc, Exception):
            return
        if isinstance(exc, jinja2.TemplateSyntaxError):
            path = (exc.filename or self.display).partition("#")[0]
            raise TemplateError(path, exc.lineno, f"template syntax: {exc.message}") from None
        if isinstance(exc, OutsideFolder):
            found = self.library.loader.locate(exc, tb)
            raise TemplateError(found.path, found.line, found.message) from None
        if isinstance(exc, jinja2.TemplateNotFound):
            raise TemplateError(
                self.display, _frame_line(tb, self.library) or 1, f"template '{exc.name}' not found"
            ) from None
        path, line = self.display, 1
        frame = _template_frame(tb, self.library)
        if frame is not None:
            path, line = frame
        message = exc.message if isinstance(exc, jinja2.TemplateError) and exc.message else str(exc)
        raise TemplateError(path, line, message) from None


def _template_frame(tb: TracebackType | None, library: TemplateLibrary) -> tuple[str, int] | None:
    """The innermost traceback frame that is template code (Jinja2 rewrites them to template lines)."""
    return template_frame(tb, library.emails_dir)


def _frame_line(tb: TracebackType | None, library: TemplateLibrary) -> int | None:
    frame = _template_frame(tb, library)
    return frame[1] if frame else None


def _template_values(context: Mapping[str, Any], recorder: _LinkRecorder) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in context.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            # Shallow: asdict deep-copies every field, which costs more than the rest of this loop.
            value = Record(key, {f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
        elif isinstance(value, Mapping) and not isinstance(value, Record):
            value = Record(key, value)
        elif key.endswith("_url") and isinstance(value, str):
            value = TrustedURL(value)
        values[key] = value
    values["link"] = recorder
    return values


def _one_line(text: str) -> str:
    # Lead data in a subject must never start a new header line.
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------


_HTML_TAG = re.compile(r"<(?:[A-Za-z][A-Za-z0-9-]*[\s/>]|/[A-Za-z]|!--|\?)")


# --------------------------------------------------------------------------------------------------
# Plain text from HTML
# --------------------------------------------------------------------------------------------------

_BLOCKS = frozenset(
    {"p", "div", "table", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "blockquote", "hr"}
    | {"section", "header", "footer", "pre"}
)
_SKIP = frozenset({"head", "style", "script", "title"})
_VOID = frozenset({"br", "hr", "img", "meta", "link", "input"})
_BLANK_LINES = re.compile(r"\n\n\n+")  # not `\n{3,}`: a literal prefix lets the regex skip ahead, 4x faster


class _TextMaker:
    """Walks the parsed page once, writing text pieces to `out`; element boundaries become newlines."""

    __slots__ = ("lists", "out")

    def __init__(self) -> None:
        self.out: list[str] = []
        self.lists: list[list[int]] = []  # one counter per open list; [-1] for bullets

    def children(self, node: LexborNode) -> None:
        child = node.child
        while child is not None:
            tag = child.tag
            if tag == "-text":
                text = child.text_content or ""
                # Most text nodes of a page are the indentation between tags.
                self.out.append(" " if text.isspace() else _collapse_spaces(text))
            elif tag is not None and tag[0] != "-":  # not a comment
                self.element(child, tag)
            child = child.next

    def element(self, node: LexborNode, tag: str) -> None:
        out = self.out
        if tag in _VOID:
            if tag == "br":
                out.append("\n")
            elif tag == "hr":
                out.append("\n\n---\n\n")
            return
        attrs = node.attributes
        style = attrs.get("style")
        if (
            tag in _SKIP
            or (style and "display:none" in style.replace(" ", "").lower())
            or attrs.get("aria-hidden") == "true"
        ):
            return
        if tag in _BLOCKS:
            out.append("\n\n")
        if tag == "ul":
            self.lists.append([-1])
        elif tag == "ol":
            self.lists.append([0])
        elif tag == "li":
            out.append("\n")
            counter = self.lists[-1] if self.lists else [-1]
            if counter[0] >= 0:
                counter[0] += 1
                out.append(f"{counter[0]}. ")
            else:
                out.append("- ")
        if tag == "a":
            self.link(node, attrs.get("href"))
        else:
            self.children(node)
        if tag in ("ul", "ol"):
            self.lists.pop()
        if tag in _BLOCKS:
            out.append("\n\n")

    def link(self, node: LexborNode, href: str | None) -> None:
        out = self.out
        start = len(out)
        self.children(node)
        text = " ".join("".join(out[start:]).split())
        del out[start:]
        if href and href != text and not href.startswith("#"):
            shown = href.removeprefix("mailto:")
            out.append(f"{text} ({shown})" if text and text != shown else shown)
        else:
            out.append(text)

    def text(self) -> str:
        lines = [line.strip() for line in "".join(self.out).split("\n")]
        return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip() + "\n"


def _collapse_spaces(text: str) -> str:
    r"""Each run of whitespace as one space, like `re.sub(r"\s+", " ", text)` but three times faster
    (str.split and the regex agree on what whitespace is)."""
    words = text.split()
    if not words:
        return " " if text else ""
    joined = " ".join(words)
    if text[0].isspace():
        joined = " " + joined
    if text[-1].isspace():
        joined += " "
    return joined


def html_to_text(html: str) -> str:
    """A readable plain-text part: paragraphs and list items kept, links as `text (url)`, no tags."""
    maker = _TextMaker()
    root = LexborHTMLParser(html).root
    if root is not None:
        maker.element(root, root.tag or "html")
    return maker.text()
