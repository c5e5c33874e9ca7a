"""Email templates: the example emails render, authors get file:line errors, and the sandbox holds."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from engine.core.definition import Funnel, SendStep
from engine.core.yamlfile import read_yaml
from engine.mail.templates import Sender, TemplateError, TemplateLibrary, html_to_text, lead_fields, sample_context

ROOT = Path(__file__).resolve().parents[2]
EMAILS = ROOT / "emails"
SENDER = Sender("Greenleaf Consulting", "12 Orchard Row, Bristol BS1 4DJ", "https://greenleaf.example")

LAYOUT = """<html><head><style>p { color: #123456; }</style></head><body>
{% if preheader %}<div style="display:none" aria-hidden="true">{{ preheader }}</div>{% endif %}
{{ content }}
{% include "_partials/footer.html" %}
</body></html>
"""
FOOTER = '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> {{ sender.postal_address }}</p>\n'


def context(**lead: Any) -> dict[str, Any]:
    ctx = sample_context(SENDER)
    ctx["lead"] = lead_fields(lead.pop("email", "sam@example.com"), lead)
    return ctx


@pytest.fixture
def emails(tmp_path: Path) -> Path:
    root = tmp_path / "emails"
    (root / "_layouts").mkdir(parents=True)
    (root / "_partials").mkdir()
    (root / "_layouts" / "base.html").write_text(LAYOUT)
    (root / "_partials" / "footer.html").write_text(FOOTER)
    (root / "t").mkdir()
    return root


def write(emails: Path, name: str, text: str) -> TemplateLibrary:
    (emails / name).write_text(text)
    return TemplateLibrary(emails)


# --------------------------------------------------------------------------------------------------
# The example emails
# --------------------------------------------------------------------------------------------------

LIBRARY = TemplateLibrary(EMAILS)


def funnel_templates() -> list[str]:
    funnel = Funnel.model_validate(read_yaml(ROOT / "funnels" / "lead-magnet.yaml").data)
    return sorted({s.send for stage in funnel.stages for s in stage.steps if isinstance(s, SendStep)})


def test_every_email_of_the_example_funnel_exists_and_is_listed() -> None:
    assert set(funnel_templates()) <= set(LIBRARY.names())
    assert len(funnel_templates()) >= 12


@pytest.mark.parametrize("name", funnel_templates())
def test_example_email_renders_with_and_without_lead_details(name: str) -> None:
    assert LIBRARY.check(name, SENDER) == []
    full = LIBRARY.render(name, context(first_name="Sam", company="Acme Ltd", employees=12))
    bare = LIBRARY.render(name, context())
    assert full.subject and "\n" not in full.subject
    assert full.preheader
    assert "Sam" in full.html and "Hi Sam," in full.text
    assert "Hi there," in bare.text
    for part in (full.html, full.text):
        assert "https://example.com/u/sample-token" in part  # unsubscribe
        assert "https://example.com/p/sample-token" in part  # preferences
        assert "12 Orchard Row, Bristol BS1 4DJ" in part
    assert full.links, "every example email links somewhere, by name"
    assert "<" not in full.text
    words = len(full.text.split("Priya Shah")[0].split())  # the body, before the signature
    assert 120 <= words <= 300


def test_report_delivery_links_the_report_and_keeps_its_hand_written_text() -> None:
    email = LIBRARY.render("lead-magnet/report-delivery", context(first_name="Sam"))
    report = "https://greenleaf.example/reports/real-cost-of-not-recycling.pdf"
    assert email.links == (("report", report),)
    assert f'href="{report}"' in email.html
    assert email.text.startswith('Hi Sam,\n\nThanks for asking for "The real cost of not recycling"')
    assert report in email.text


def test_css_is_inlined_and_the_plain_text_part_is_derived(emails: Path) -> None:
    lib = write(
        emails,
        "t/hello.md",
        "---\nsubject: Hi\n---\nHello **{{ lead.first_name }}**, see [our prices]"
        "({{ link('pricing', 'https://x.example/pricing?a=1&b=2') }}).\n\n- one\n- two\n",
    )
    email = lib.render("t/hello", context(first_name="Sam"))
    assert '<p style="color: #123456;">' in email.html
    assert "<style>" not in email.html
    assert 'href="https://x.example/pricing?a=1&amp;b=2"' in email.html
    assert email.text == (
        "Hello Sam, see our prices (https://x.example/pricing?a=1&b=2).\n\n- one\n- two\n\n"
        f"Unsubscribe (https://example.com/u/sample-token) {SENDER.postal_address}\n"
    )
    assert email.links == (("pricing", "https://x.example/pricing?a=1&b=2"),)


def test_html_to_text_keeps_structure_and_drops_hidden_parts() -> None:
    html = (
        '<html><head><title>T</title><style>p{}</style></head><body><div style="display: none">preview</div>'
        '<h1>Title</h1><p>One<br>two &amp; <a href="https://a.example/">three</a></p>'
        '<ol><li>first</li><li>second</li></ol><p><a href="https://b.example/">https://b.example/</a></p></body></html>'
    )
    assert html_to_text(html) == (
        "Title\n\nOne\ntwo & three (https://a.example/)\n\n1. first\n2. second\n\nhttps://b.example/\n"
    )


def test_html_templates_and_layout_choice(emails: Path) -> None:
    (emails / "_layouts" / "plain.html").write_text("<div>{{ content }}</div>{% include '_partials/footer.html' %}")
    lib = write(
        emails,
        "t/page.html",
        "---\nsubject: S\nlayout: plain\nfrom: Team <team@x.example>\n"
        "reply_to: help@x.example\n---\n<p>Hi {{ lead.first_name }}</p>\n",
    )
    email = lib.render("t/page", context(first_name="Sam"))
    assert email.html.startswith("<html><head></head><body><div><p>Hi Sam</p></div>")
    assert (email.from_, email.reply_to) == ("Team <team@x.example>", "help@x.example")
    assert lib.names() == ["t/page"]
    assert lib.exists("t/page") and not lib.exists("t/missing") and not lib.exists("../etc/passwd")


def test_subject_renders_lead_data_as_one_plain_line(emails: Path) -> None:
    lib = write(
        emails,
        "t/s.html",
        "---\nsubject: 'Hi {{ lead.first_name }} & co'\npreheader: '{{ lead.company }}'\n---\n<p>x</p>\n",
    )
    email = lib.render("t/s", context(first_name="Sam\r\nBcc: victim@example.com", company="<b>A</b>"))
    assert email.subject == "Hi Sam Bcc: victim@example.com & co"
    assert email.preheader == "<b>A</b>"
    assert lib.subject("t/s") == "Hi {{ lead.first_name }} & co"


# --------------------------------------------------------------------------------------------------
# Errors an author can act on
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("Hello\n", 1, "expected front matter between '---' lines"),
        ("---\npreheader: p\n---\nHello\n", 2, "front matter needs 'subject'"),
        ("---\nsubject: S\ncolour: green\n---\nHello\n", 3, "unknown front matter key 'colour'"),
        ("---\nsubject: S\nlayout: fancy\n---\nHello\n", 3, "layout 'fancy' not found"),
        ("---\nsubject: [unclosed\n---\nHello\n", 3, "invalid YAML"),
        ("---\nsubject: S\n---\nHello\n\n{% if x %}\n", 6, "template syntax"),
        ("---\nsubject: S\n\npreheader: '{{ oops'\n---\nHello\n", 4, "template syntax"),
        ("---\nsubject: S\nfrom: Greenleaf news at example\n---\nHello\n", 3, "expected one address"),
        ("---\nsubject: S\nfrom: a@example.com, b@example.com\n---\nHello\n", 3, "expected one address"),
        ("---\nsubject: S\n\nreply_to: a@example.com, b@\n---\nHello\n", 4, "expected addresses"),
    ],
)
def test_load_errors_name_file_and_line(emails: Path, text: str, line: int, message: str) -> None:
    lib = write(emails, "t/bad.md", text)
    with pytest.raises(TemplateError) as caught:
        lib.load("t/bad")
    assert str(caught.value).startswith(f"{(emails / 't/bad.md').as_posix()}:{line}: ")
    assert message in caught.value.message
    assert lib.check("t/bad")[0].line == line


def test_unknown_template_and_ambiguous_template(emails: Path) -> None:
    lib = write(emails, "t/twice.md", "---\nsubject: S\n---\nx\n")
    (emails / "t" / "twice.html").write_text("---\nsubject: S\n---\nx\n")
    with pytest.raises(TemplateError, match=r"both \.md and \.html"):
        lib.load("t/twice")
    with pytest.raises(TemplateError, match="no template 't/nope'"):
        lib.load("t/nope")


def test_check_reports_a_variable_without_value_or_fallback(emails: Path) -> None:
    lib = write(
        emails,
        "t/strict.md",
        "---\nsubject: S\n---\nHi {{ lead.first_name | default('there') }},\n\n"
        "Your plan for {{ lead.company }} is ready.\n",
    )
    errors = lib.check("t/strict")
    assert [str(e) for e in errors] == [
        f"{(emails / 't/strict.md').as_posix()}:6: lead.company has no value; give it a fallback, e.g. "
        '{{ lead.company | default("...") }}'
    ]
    with pytest.raises(TemplateError):
        lib.render("t/strict", context())
    assert "Acme" in lib.render("t/strict", context(company="Acme")).html


def test_undefined_in_a_partial_names_the_partial(emails: Path) -> None:
    (emails / "_partials" / "sig.md").write_text("Cheers,\n{{ sender.nickname }}\n")
    lib = write(emails, "t/p.md", "---\nsubject: S\n---\nx\n\n{% include '_partials/sig.md' %}\n")
    [error] = lib.check("t/p")
    assert (error.path, error.line) == ((emails / "_partials/sig.md").as_posix(), 2)
    assert "sender.nickname has no value" in error.message


def test_check_requires_an_unsubscribe_link_in_both_parts(emails: Path) -> None:
    (emails / "_layouts" / "bare.html").write_text("{{ content }}")
    lib = write(emails, "t/no-unsub.md", "---\nsubject: S\nlayout: bare\n---\nHello\n")
    messages = [e.message for e in lib.check("t/no-unsub")]
    assert messages == [
        "the HTML part has no unsubscribe link ({{ unsubscribe_url }})",
        "the plain-text part has no unsubscribe link ({{ unsubscribe_url }})",
    ]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("link('Bad Name', 'https://x.example')", "kebab-case"),
        ("link('x', 'javascript:alert(1)')", "or mailto URL"),
        ("link('x', 'https://a.example') ~ link('x', 'https://b.example')", "two URLs"),
    ],
)
def test_bad_links_are_errors(emails: Path, call: str, message: str) -> None:
    lib = write(emails, "t/l.md", "---\nsubject: S\n---\n\n{{ " + call + " }}\n")
    with pytest.raises(TemplateError, match=message) as caught:
        lib.render("t/l", context())
    assert caught.value.line == 5


def test_a_link_used_twice_is_recorded_once(emails: Path) -> None:
    lib = write(
        emails,
        "t/l.md",
        "---\nsubject: S\n---\n[a]({{ link('book-call', 'https://x.example/b') }}) "
        "[b]({{ link('book-call', 'https://x.example/b') }}) "
        "[c]({{ link('pricing', 'https://x.example/p') }})\n",
    )
    assert lib.render("t/l", context()).links == (
        ("book-call", "https://x.example/b"),
        ("pricing", "https://x.example/p"),
    )


# --------------------------------------------------------------------------------------------------
# The sandbox and escaping
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ lead._fields }}",
        "{{ link.__self__ }}",
        "{{ range(10**9) | list }}",
        "{{ 'x' * 10**8 }}",
        "{{ 2 ** 10000000 }}",
        "{{ ((10 ** 60) ** 60) ** 60 }}",
        "{{ lead.update({'email': 'x'}) }}",
        "{% set l = [] %}{{ l.append(1) }}",
    ],
)
@pytest.mark.parametrize("suffix", [".md", ".html"])
def test_template_injection_fails_safely(emails: Path, payload: str, suffix: str) -> None:
    lib = write(emails, f"t/evil{suffix}", f"---\nsubject: S\n---\n{payload}\n")
    with pytest.raises(TemplateError) as caught:
        lib.render("t/evil", context())
    assert caught.value.line == 4
    for leak in ("<class", "<function", "<module", "0x", "sample-token", "sample@", "{'"):
        assert leak not in caught.value.message


@pytest.mark.parametrize("target", ["/etc/hostname", "../../etc/hostname", "_partials/../../outside.txt"])
def test_includes_stay_inside_the_emails_folder(emails: Path, target: str) -> None:
    (emails.parent / "outside.txt").write_text("secret")
    lib = write(emails, "t/inc.html", f"---\nsubject: S\n---\n{{% include '{target}' %}}\n")
    with pytest.raises(TemplateError, match="not found") as caught:
        lib.render("t/inc", context())
    assert caught.value.line == 4


SECRET = "FUNNEL_SECRET_KEY=kept-on-the-server-only"


@pytest.fixture
def secret(emails: Path) -> Path:
    """A file beside the emails folder that no template may read (a project's `.env`)."""
    path = emails.parent / ".env"
    path.write_text(SECRET + "\n")
    return path


def _refused(error: TemplateError, path: Path, line: int) -> None:
    assert (error.path, error.line) == (path.as_posix(), line), str(error)
    assert "outside" in error.message
    assert SECRET not in str(error)


def test_an_include_through_a_link_that_leads_outside_the_folder_is_refused(emails: Path, secret: Path) -> None:
    # Git stores symbolic links: whoever can commit to emails/ can add one.
    (emails / "_partials" / "notes.txt").symlink_to(Path("..", "..", ".env"))
    lib = write(emails, "t/leak.md", '---\nsubject: S\n---\n{% include "_partials/notes.txt" %}\n')
    with pytest.raises(TemplateError) as caught:
        lib.render("t/leak", context())
    _refused(caught.value, emails / "t/leak.md", 4)
    assert "_partials/notes.txt" in caught.value.message
    [error] = lib.check("t/leak")
    _refused(error, emails / "t/leak.md", 4)


def test_a_folder_of_partials_that_is_a_link_to_elsewhere_is_refused(emails: Path, secret: Path) -> None:
    (emails / "_partials" / "shared").symlink_to(emails.parent, target_is_directory=True)
    lib = write(emails, "t/leak.html", "---\nsubject: S\n---\n<p>x</p>\n\n{% include '_partials/shared/.env' %}\n")
    with pytest.raises(TemplateError) as caught:
        lib.render("t/leak", context())
    _refused(caught.value, emails / "t/leak.html", 6)


@pytest.mark.parametrize("tag", ["{% extends '_layouts/leak.html' %}", "{% import '_layouts/leak.html' as m %}"])
def test_extends_and_import_through_a_link_that_leads_outside_are_refused(emails: Path, secret: Path, tag: str) -> None:
    (emails / "_layouts" / "leak.html").symlink_to(secret)  # an absolute link
    lib = write(emails, "t/leak.html", f"---\nsubject: S\n---\n{tag}\n")
    with pytest.raises(TemplateError) as caught:
        lib.render("t/leak", context())
    _refused(caught.value, emails / "t/leak.html", 4)


@pytest.mark.parametrize("linked", ["t/leak.md", "t/leak.txt", "_layouts/leak.html"])
def test_a_body_text_part_or_layout_that_leads_outside_is_refused_at_the_link(
    emails: Path, secret: Path, linked: str
) -> None:
    if linked != "t/leak.md":
        (emails / "t" / "leak.md").write_text("---\nsubject: S\nlayout: leak\n---\nx\n")
        (emails / "_layouts" / "leak.html").symlink_to("base.html")
    (emails / linked).unlink(missing_ok=True)
    (emails / linked).symlink_to(Path("..", "..", ".env") if linked.startswith("_") else secret)
    lib = TemplateLibrary(emails)
    with pytest.raises(TemplateError) as caught:
        lib.load("t/leak")
    _refused(caught.value, emails / linked, 1)
    [error] = lib.check("t/leak")
    _refused(error, emails / linked, 1)


def test_check_finds_a_link_outside_where_no_sample_lead_goes(emails: Path, secret: Path) -> None:
    (emails / "_partials" / "notes.txt").symlink_to(Path("..", "..", ".env"))
    lib = write(
        emails,
        "t/leak.md",
        "---\nsubject: \"S{% if false %}{% include '_partials/notes.txt' %}{% endif %}\"\n---\nx\n\n"
        "{% if lead.employees | default(0) > 1000 %}\n{% include '_partials/notes.txt' %}\n{% endif %}\n",
    )
    assert [(e.path, e.line) for e in lib.check("t/leak")] == [((emails / "t/leak.md").as_posix(), n) for n in (7, 2)]
    assert all("outside" in e.message for e in lib.check("t/leak"))


def test_links_that_stay_inside_the_folder_are_followed(emails: Path, tmp_path: Path) -> None:
    (emails / "_partials" / "bye.html").symlink_to("footer.html")
    (emails / "shared").mkdir()
    (emails / "shared" / "hello.html").write_text("<p>Hello from a shared file</p>\n")
    (emails / "t" / "hello.html").symlink_to(Path("..", "shared", "hello.html"))
    write(emails, "t/ok.html", "---\nsubject: S\n---\n{% include 't/hello.html' %}{% include '_partials/bye.html' %}\n")
    # The folder itself may be reached through a link (a deployment's `emails -> releases/42/emails`).
    (tmp_path / "current").symlink_to(emails, target_is_directory=True)
    lib = TemplateLibrary(tmp_path / "current")
    assert lib.check("t/ok", SENDER) == []
    html = lib.render("t/ok", context()).html
    assert "Hello from a shared file" in html and html.count("sample-token") == 2


def test_lead_data_is_escaped_in_html_templates(emails: Path) -> None:
    lib = write(emails, "t/x.html", '---\nsubject: S\n---\n<p title="{{ lead.company }}">{{ lead.first_name }}</p>\n')
    html = lib.render("t/x", context(first_name="<script>alert(1)</script>", company='" onmouseover="x')).html
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'title="&#34; onmouseover=&#34;x"' in html or 'title="&quot; onmouseover=&quot;x"' in html


def test_lead_data_in_markdown_stays_text(emails: Path) -> None:
    lib = write(emails, "t/x.md", "---\nsubject: S\n---\nHi {{ lead.first_name }}, from {{ lead.company }}.\n")
    email = lib.render(
        "t/x",
        context(
            first_name="<img src=x onerror=alert(1)> **Sam**",
            company="[Win](https://evil.example) & co\n\n# Big",
        ),
    )
    assert "<img" not in email.html and "<strong>" not in email.html and 'evil.example"' not in email.html
    assert "<h1>" not in email.html
    assert "&lt;img src=x onerror=alert(1)&gt; **Sam**" in email.html
    assert "[Win](https://evil.example) &amp; co # Big" in email.html
    assert email.links == ()


def test_markdown_authors_cannot_write_raw_html_either(emails: Path) -> None:
    lib = write(emails, "t/x.md", "---\nsubject: S\n---\n<script>alert(1)</script>\n")
    assert "<script>" not in lib.render("t/x", context()).html


def test_markdown_is_github_flavoured_with_smart_punctuation(emails: Path) -> None:
    lib = write(
        emails,
        "t/g.md",
        '---\nsubject: S\n---\n"Quoted" and it\'s ~~old~~ -- see https://x.example/new...\n\n'
        "| Bin | Cost |\n|:--|--:|\n| Card | £5 |\n",
    )
    email = lib.render("t/g", context())
    assert ">“Quoted” and it’s <del>old</del> – see https://x.example/new…</p>" in email.html
    assert '<th align="left">Bin</th>' in email.html and '<td align="right">£5</td>' in email.html
    assert 'href="https://x.example' not in email.html  # a bare URL is not a link: links go through link()
    assert "Card £5" in email.text


def test_raw_html_in_markdown_is_left_out_and_the_check_says_where(emails: Path) -> None:
    lib = write(emails, "t/raw.md", '---\nsubject: S\n---\nHello\n\n<div class="box">Boxed</div>\n\nBye <b>now</b>\n')
    email = lib.render("t/raw", context())
    assert "Boxed" not in email.html and "<b>" not in email.html and "class=" not in email.html
    assert email.text.startswith("Hello\n\nBye now\n")
    [error] = lib.check("t/raw")
    assert (error.line, error.message) == (
        6,
        "raw HTML is left out of Markdown emails; use Markdown, or write an .html email",
    )


def test_rendering_many_markdown_emails_does_not_grow_memory(emails: Path) -> None:
    statm = Path("/proc/self/statm")
    if not statm.exists():
        pytest.skip("reads the resident set size from /proc")
    (emails / "_layouts" / "bare.html").write_text("{{ content }}")
    paragraph = "Some *text*, a [link]({{ link('x', 'https://x.example/') }}) and ~~more~~.\n\n| a |\n|---|\n| 1 |\n\n"
    lib = write(emails, "t/m.md", "---\nsubject: S\nlayout: bare\n---\n" + paragraph * 5)

    def resident() -> int:
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    for _ in range(100):
        lib.render("t/m", context())
    before = resident()
    for _ in range(1000):
        lib.render("t/m", context())
    assert resident() - before < 8 * 2**20  # a parse tree and output string kept per render would be ~20 KB


def test_markdown_that_differs_per_lead_does_not_grow_memory(emails: Path) -> None:
    statm = Path("/proc/self/statm")
    if not statm.exists():
        pytest.skip("reads the resident set size from /proc")
    (emails / "_layouts" / "bare.html").write_text("{{ content }}")
    # A loop over lead data and a value marked safe: each lead's Markdown is a text of its own.
    body = (
        "{% for i in range(lead.employees) %}- item {{ i }}\n{% endfor %}\n"
        "{{ lead.company | e }} ~~x~~\n\n| a |\n|---|\n| 1 |\n"
    )
    lib = write(emails, "t/v.md", "---\nsubject: S\nlayout: bare\n---\n" + body * 5)

    def resident() -> int:
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    for n in range(300):
        lib.render("t/v", context(company=f"Acme {n}", employees=n % 7))
    before = resident()
    for n in range(1000):
        email = lib.render("t/v", context(company=f"Acme {n}", employees=n % 7))
    assert "Acme 999" in email.html and email.html.count("<li>") == 5 * (999 % 7)
    assert resident() - before < 8 * 2**20  # a parse tree and output string kept per text would be ~14 MB


def test_each_lead_gets_its_own_values_and_branches(emails: Path) -> None:
    lib = write(
        emails,
        "t/b.md",
        "---\nsubject: S\n---\nHi **{{ lead.first_name }}**,\n\n"
        "{% if lead.employees > 10 %}Big [offer]({{ link('big', 'https://x.example/big') }}).{% else %}"
        "Small offer.{% endif %}\n\n{% include '_partials/sig.md' %}\n",
    )
    (emails / "_partials" / "sig.md").write_text("{{ lead.company }}\\\nTeam\n")
    seen = {}
    for n in range(40):
        email = lib.render("t/b", context(first_name=f"Sam{n}", company=f"Co{n} & sons", employees=n))
        seen[n] = email
        assert f">Hi <strong>Sam{n}</strong>,</p>" in email.html
        assert f">Co{n} &amp; sons<br>\nTeam</p>" in email.html
        assert ('<a href="https://x.example/big">offer</a>' in email.html) == (n > 10)
        assert ("Small offer." in email.html) == (n <= 10)
    assert seen[3].links == () and seen[30].links == (("big", "https://x.example/big"),)


def test_lead_data_cannot_break_a_line_or_a_link_in_markdown(emails: Path) -> None:
    lib = write(
        emails,
        "t/l.md",
        "---\nsubject: S\n---\nHi {{ lead.first_name }}\nwelcome.\n\n"
        "[Your page](https://x.example/u/{{ lead.handle }}) and {{ lead.company }}\n",
    )
    email = lib.render("t/l", context(first_name="Sam  ", handle="sam smith", company="   "))
    # Two spaces at the end of a line are a line break in Markdown; from a lead's name they are spaces.
    assert ">Hi Sam  \nwelcome.</p>" in email.html
    assert '<a href="https://x.example/u/sam%20smith">Your page</a> and    </p>' in email.html


def test_lead_data_in_a_markdown_code_span_shows_as_written(emails: Path) -> None:
    lib = write(emails, "t/c.md", "---\nsubject: S\n---\nYour code: `{{ lead.code }}`\n")
    email = lib.render("t/c", context(code="A&B (x)-1"))
    assert "<code>A&amp;B (x)-1</code>" in email.html


def test_an_unsafe_address_from_lead_data_is_left_empty(emails: Path) -> None:
    lib = write(
        emails,
        "t/u.md",
        '---\nsubject: S\n---\n[Site]({{ lead.website }}) and ![logo]({{ lead.logo }} "{{ lead.company }}")\n',
    )
    email = lib.render("t/u", context(website="javascript:alert(1)", logo="https://x.example/a b.png", company='"Q"'))
    assert '<a href="">Site</a>' in email.html
    assert '<img src="https://x.example/a%20b.png" alt="logo" title="&quot;Q&quot;">' in email.html


def test_an_address_the_engine_chose_stays_a_link(emails: Path) -> None:
    lib = write(emails, "t/a.md", "---\nsubject: S\n---\nConfirm: <{{ confirm_url }}>\n")
    html = lib.render("t/a", context()).html
    assert '<a href="https://example.com/confirm/sample-token">https://example.com/confirm/sample-token</a>' in html


def test_what_a_macro_or_a_block_writes_in_markdown_is_text(emails: Path) -> None:
    lib = write(
        emails,
        "t/m.md",
        "---\nsubject: S\n---\n{% macro hi(name) %}Hello **{{ name }}**{% endmacro %}"
        "{% set dear %}Dear {{ lead.first_name }}{% endset %}{{ hi(lead.first_name) }}. {{ dear }}.\n",
    )
    email = lib.render("t/m", context(first_name="S&m"))
    assert ">Hello **S&amp;m**. Dear S&amp;m.</p>" in email.html
    assert "Hello **S&m**. Dear S&m." in email.text


def test_loading_is_cached(emails: Path) -> None:
    lib = write(emails, "t/c.md", "---\nsubject: One\n---\nx\n")
    assert lib.load("t/c") is lib.load("t/c")
    assert lib.subject("t/c") == "One"


# --------------------------------------------------------------------------------------------------
# Bounds: what a template may build, and how long it may run
# --------------------------------------------------------------------------------------------------

BIG = "{% set s = 'x' * 10000 %}"  # the largest repetition the sandbox allows
TILDE5 = "{% set s = s ~ s ~ s ~ s ~ s %}"
PLUS5 = "{% set s = s + s + s + s + s %}"
CAPTURE = "{% set b %}{% for i in range(10000) %}" + "z" * 1000 + "{% endfor %}{% endset %}"
NESTED = "{% set l = [s, s, s, s, s, s, s, s, s, s] %}{% set l = [l, l, l, l, l, l, l, l, l, l] %}"


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        # Each built 50 to 100 MB, or kept `funnel validate` busy for minutes.
        ("{{ lead.email | center(50000000) }}", "characters"),
        ("{{ '%50000000s' | format(lead.email) }}", "characters"),
        ("{{ '%50000000s' % lead.email }}", "characters"),
        ("{{ '%*s' % (50000000, lead.email) }}", "characters"),
        ("{{ '{:>50000000}'.format(lead.email) }}", "characters"),
        ("{{ '{:.50000000f}'.format(1.5) }}", "characters"),
        ("{{ lead.email.center(50000000) }}", "characters"),
        ("{{ lead.email.zfill(50000000) }}", "characters"),
        (BIG + "{{ ([s] * 10000) | join }}", "characters"),
        (BIG + "{{ ''.join([s] * 10000) }}", "characters"),
        (BIG + "{{ [s] * 10000 }}", "characters"),
        (BIG + "{{ ([s] * 10000) | string }}", "characters"),
        (BIG + "{{ ([s] * 10000) | tojson }}", "characters"),
        (BIG + "{{ s.replace('x', s) }}", "characters"),
        (BIG + "{{ s | replace('x', s) }}", "characters"),
        (BIG + "{{ s | wordwrap(1) | indent(10000, true) }}", "characters"),
        (BIG + "{{ s | wordwrap(1, wrapstring=s) }}", "characters"),
        (BIG + TILDE5 * 3, "characters"),
        (BIG + PLUS5 * 3, "characters"),
        (BIG + NESTED + "{{ l }}", "characters"),
        ("{{ lipsum(100000000) }}", "lipsum"),
        ("{{ [1] | batch(1000000000, 'x') | list }}", "batch"),
        ("{{ [1] | slice(1000000000) | list }}", "slice"),
        ("{{ range(100000) | batch(1) | list | sum(start=[0]) | length }}", "items"),
        ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "loop iterations"),
        ("{% for i in range(100000) %}{{ 'y' * 10000 }}{% endfor %}", "characters"),
        (CAPTURE + "{{ b | length }}", "characters"),
        ("{% macro m(n) %}{% if n %}{{ m(n - 1) }}{{ m(n - 1) }}{% endif %}{% endmacro %}{{ m(40) }}", "calls"),
        (
            "{% for i in range(3) recursive %}{% if loop.depth < 3 %}{{ loop(range(100000)) }}{% endif %}{% endfor %}",
            "loop iterations",
        ),
    ],
)
@pytest.mark.parametrize("suffix", [".md", ".html"])
def test_a_template_that_would_exhaust_the_machine_fails_at_its_line(
    emails: Path, payload: str, words: str, suffix: str
) -> None:
    lib = write(emails, f"t/huge{suffix}", f"---\nsubject: S\n---\n{payload}\n")
    started = time.thread_time()
    with pytest.raises(TemplateError) as caught:
        lib.render("t/huge", context())
    # The count or size bound stops it well before the CPU-time backstop would.
    assert time.thread_time() - started < 2
    assert (caught.value.path, caught.value.line) == ((emails / f"t/huge{suffix}").as_posix(), 4)
    assert words in caught.value.message, caught.value.message
    [error] = lib.check("t/huge")
    assert str(error) == str(caught.value)


def test_a_subject_is_bounded_like_the_body(emails: Path) -> None:
    lib = write(emails, "t/subject.md", '---\nsubject: "{{ lead.email | center(5000000) }}"\n---\nx\n')
    with pytest.raises(TemplateError) as caught:
        lib.render("t/subject", context())
    assert (caught.value.line, "characters" in caught.value.message) == (2, True)


def test_the_output_bound_names_the_line_that_passes_it(emails: Path) -> None:
    from engine.mail.template_bounds import MAX_TEXT_CHARS

    # Each line is well within the bound; the tenth is where the email passes it.
    line = "{{ 'a' * 10000 }}" * (MAX_TEXT_CHARS // 10000 // 10 + 1) + "\n"
    lib = write(emails, "t/long.html", "---\nsubject: S\n---\n" + line * 12)
    with pytest.raises(TemplateError) as caught:
        lib.render("t/long", context())
    assert caught.value.line == 3 + 10
    assert f"more than {MAX_TEXT_CHARS:,} characters" in caught.value.message


def test_render_time_is_bounded_where_counting_steps_is_not_enough(
    emails: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.mail import template_bounds

    monkeypatch.setattr(template_bounds, "MAX_RENDER_SECONDS", 0.3)
    # Few steps, each a sort of 100,000 items: the clock stops it, not the step count.
    slow = "{% set r = range(100000) | list | reverse | list %}{% for i in range(20000) %}{{ (r|sort)[0] }}{% endfor %}"
    lib = write(emails, "t/slow.html", "---\nsubject: S\n---\n" + slow + "\n")
    started = time.thread_time()
    with pytest.raises(TemplateError) as caught:
        lib.render("t/slow", context())
    assert time.thread_time() - started < 2
    assert caught.value.line == 4
    assert "more than 0.3 s of CPU time" in caught.value.message


def test_real_templates_stay_well_within_the_bounds(emails: Path) -> None:
    # Loops, macros, includes, formatting and joins as emails use them all still work.
    lib = write(
        emails,
        "t/fine.html",
        "---\nsubject: \"{{ '%s, %d tips' | format(lead.first_name | default('Hi'), 3) }}\"\n---\n"
        "{% macro item(n) %}<li>{{ '{:>3}'.format(n) }} {{ 'tip' | center(9) }}</li>{% endmacro %}"
        "<ul>{% for n in range(1, 4) %}{{ item(n) }}{% endfor %}</ul>"
        "<p>{{ ['a', 'b', 'c'] | join(', ') }} {{ 'x' ~ 1 ~ 'y' }} {{ 10 + 5 }} {{ 'ab' + 'cd' }}</p>"
        "<p>{{ [[1], [2, 3]] | sum(start=[]) }} {{ range(100000) | sum }} {{ range(99999) | list | length }}</p>"
        "{% for row in [[1, 2], [3, 4]] recursive %}{{ row if row is number else loop(row) }}{% endfor %}"
        "<p>{{ lead.email | replace('@', ' at ') | wordwrap(40) | indent(2) }} {{ '%-5s|' % 'ab' }}</p>\n",
    )
    assert lib.check("t/fine", SENDER) == []
    email = lib.render("t/fine", context(first_name="Sam"))
    assert email.subject == "Sam, 3 tips"
    assert "<li>  1    tip   </li>" in email.html and "a, b, c x1y 15 abcd" in email.html
    assert "1234" in email.html and "sam at example.com" in email.html and "ab   |" in email.html
    assert "[1, 2, 3] 4999950000 99999" in email.html
