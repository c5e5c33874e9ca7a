"""The plain-text part derived from an email's HTML: what a reader of the text part sees."""

from __future__ import annotations

import pytest

from engine.mail.templates import html_to_text


def page(body: str) -> str:
    head = "<head><title>Subject</title><style>p { color: red; }</style></head>"
    return f"<!DOCTYPE html><html>{head}<body>{body}</body></html>"


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ('<p>Write to <a href="mailto:help@x.example">help@x.example</a></p>', "Write to help@x.example\n"),
        ('<p><a href="mailto:help@x.example">our team</a></p>', "our team (help@x.example)\n"),
        ('<p><a href="#top">Back to top</a></p>', "Back to top\n"),
        ('<p><a href="https://x.example/a"><img src="logo.png"></a></p>', "https://x.example/a\n"),
        ("<p><a>no target</a></p>", "no target\n"),
        (
            '<p><a href="https://x.example/">  Our\n  <b>new</b>\tprices </a></p>',
            "Our new prices (https://x.example/)\n",
        ),
    ],
)
def test_links_show_their_target_once(body: str, text: str) -> None:
    assert html_to_text(page(body)) == text


def test_hidden_elements_have_no_text() -> None:
    body = (
        '<div aria-hidden="true">preview text</div><span style="DISPLAY : none">tracking</span>'
        "<script>var p = '<p>';</script><p>Shown</p><!-- a comment --><p aria-hidden=\"false\">Also shown</p>"
    )
    assert html_to_text(page(body)) == "Shown\n\nAlso shown\n"


def test_lists_bullets_numbers_and_nesting() -> None:
    body = (
        "<ul><li>apples</li><li>pears<ol><li>first</li><li>second</li></ol></li><li>plums</li></ul>"
        "<ol><li>one</li><li style='display:none'>hidden</li><li>two</li></ol>"
    )
    assert html_to_text(page(body)) == ("- apples\n- pears\n\n1. first\n2. second\n\n- plums\n\n1. one\n2. two\n")


def test_whitespace_is_collapsed_and_blocks_are_separated_by_one_blank_line() -> None:
    body = (
        "<div>\n   <h2>  A\u00a0 title </h2>\n\n\n<p>Line one<br>\n  line   two</p><hr><table><tr><td>cell</td>\n"
        "<td>next</td></tr></table><blockquote><p>quoted</p></blockquote></div>"
    )
    assert html_to_text(page(body)) == "A title\n\nLine one\nline two\n\n---\n\ncell next\n\nquoted\n"


def test_entities_are_decoded_and_unclosed_paragraphs_still_separate() -> None:
    assert html_to_text(page("<p>Fish &amp; chips &lt;3<p>&ldquo;Quoted&rdquo;")) == "Fish & chips <3\n\n“Quoted”\n"
