"""Markdown to HTML (`engine.mail.markdown`): it writes what cmark-gfm, the renderer the engine used before,
wrote for the same text. Each expected line below is cmark-gfm's output with smart punctuation."""

from __future__ import annotations

import pytest

from engine.mail.markdown import Markdown

MARKDOWN = Markdown()


@pytest.mark.parametrize(
    ("text", "html"),
    [
        ("*x*'quoted' and ('90s) don't \"x\"y 'a'b", "<em>x</em>‘quoted’ and (‘90s) don’t “x”y ‘a’b"),
        (
            '"[link](https://x.example/) text" and "a *b" c*',
            '“<a href="https://x.example/">link</a> text” and “a <em>b” c</em>',
        ),
        ("'Tis the \"season\", isn't it? \"'Nested'\"", "‘Tis the “season”, isn’t it? “‘Nested’”"),
        ("He said \"it's `code`\" -- 'really'...", "He said “it’s <code>code</code>” – ‘really’…"),
        (
            '<b>x</b>\'quoted\' \\"escaped\\" &quot;entity&quot;',
            "<!-- raw HTML omitted -->x<!-- raw HTML omitted -->‘quoted’ &quot;escaped&quot; &quot;entity&quot;",
        ),
        ("a---b ---- c ----- d ------- `--` \\-- ....", "a—b –– c —– d —–– <code>--</code> -- …."),
        ("~~old~~ and **bold** (c) +- ,, !!!!", "<del>old</del> and <strong>bold</strong> (c) +- ,, !!!!"),
    ],
)  # fmt: skip
def test_inline_text_as_cmark_gfm_writes_it(text: str, html: str) -> None:
    assert MARKDOWN.render(text, MARKDOWN.values()) == f"<p>{html}</p>\n"


def test_blocks_as_cmark_gfm_writes_them() -> None:
    text = "# Title\n\n| Bin | Cost |\n|:--|--:|\n| Card | £5 |\n\n- one\n- two\n\n<div>x</div>\n\nbreak\\\nhere\n"
    assert MARKDOWN.render(text, MARKDOWN.values()) == (
        '<h1>Title</h1>\n<table>\n<thead>\n<tr>\n<th align="left">Bin</th>\n<th align="right">Cost</th>\n'
        '</tr>\n</thead>\n<tbody>\n<tr>\n<td align="left">Card</td>\n<td align="right">£5</td>\n</tr>\n'
        "</tbody>\n</table>\n<ul>\n<li>one</li>\n<li>two</li>\n</ul>\n<!-- raw HTML omitted -->\n"
        "<p>break<br />\nhere</p>\n"
    )


def test_values_go_in_after_the_markdown_and_the_form_is_kept() -> None:
    first, second = MARKDOWN.values(), MARKDOWN.values()
    text = f"Hi **{first.word('Sam')}**, see <{first.url('https://x.example/a b')}>\n"
    assert text == f"Hi **{second.word('*Zoë* & co')}**, see <{second.url('https://x.example/ü')}>\n"
    assert MARKDOWN.render(text, first) == (
        '<p>Hi <strong>Sam</strong>, see <a href="https://x.example/a%20b">https://x.example/a b</a></p>\n'
    )
    assert MARKDOWN.render(text, second) == (
        '<p>Hi <strong>*Zoë* &amp; co</strong>, see <a href="https://x.example/%C3%BC">https://x.example/ü</a></p>\n'
    )
