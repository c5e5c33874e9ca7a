"""Markdown emails to HTML: GitHub-flavoured Markdown (CommonMark, tables, `~~strikethrough~~`) with
smart punctuation, through markdown-it-py's public API.

Markdown is rendered once per distinct text, not once per email. Jinja2 writes an email's Markdown
with a placeholder where each value goes (`Values`). That text is the same for every lead unless the
template's `{% if %}` or `{% for %}` depend on the lead, so its HTML is rendered once and kept as a
`Form`; each email fills the form with its own values, escaped for where they stand: text, or a
link's address. A value is text in the structure the template wrote: whatever a lead's data holds,
it cannot make a link, a heading or a line break.

Raw HTML in Markdown is left out, as `<!-- raw HTML omitted -->`. No bare URL becomes a link.
"""

from __future__ import annotations

import functools
import html
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import mdurl
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

RAW_HTML_OMITTED = "<!-- raw HTML omitted -->"

# A form is kept for texts up to this size; a longer one (rare: most emails are a few KB) is rendered
# each time, so the cache stays small whatever the templates write.
_KEPT_UP_TO = 64 * 1024
_KEPT_FORMS = 256

_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


@dataclass(frozen=True, slots=True)
class _Placeholders:
    word: str  # a plain value's placeholder: this, its index, "z"
    url: str  # a URL's placeholder: this, its index, "z"
    found: re.Pattern[str]  # either; group 1 is the index

    @staticmethod
    def new() -> _Placeholders:
        mark = f"md{secrets.token_hex(6)}"  # random, so that no template text can pass for a placeholder
        word, url = f"{mark}v", f"https://{mark}.invalid/"
        return _Placeholders(word, url, re.compile(f"(?:{re.escape(word)}|{re.escape(url)})([0-9]+)z"))


class Values:
    """The values one rendering puts into its Markdown, each behind a placeholder that Markdown reads
    as one word (a plain value) or as a URL (an address the engine or the author chose, so that
    `<{{ confirm_url }}>` stays a link)."""

    __slots__ = ("_placeholders", "size", "texts")

    def __init__(self, placeholders: _Placeholders) -> None:
        self._placeholders = placeholders
        self.texts: list[str] = []
        self.size = 0  # characters in texts

    def word(self, value: str) -> str:
        # Line breaks in a value would split the line it stands on in the text part.
        return self._add(_LINE_BREAKS.sub(" ", self._expand(value)), self._placeholders.word)

    def url(self, value: str) -> str:
        return self._add(self._expand(value), self._placeholders.url)

    def _add(self, text: str, prefix: str) -> str:
        self.texts.append(text)
        self.size += len(text)
        return f"{prefix}{len(self.texts) - 1}z"

    def _expand(self, value: str) -> str:
        # Text the template made from its own output (a macro's, a `{% set %}` block's) holds
        # placeholders: as a value, it is text, with the values in it.
        if self._placeholders.word not in value and self._placeholders.url not in value:
            return value
        return self._placeholders.found.sub(lambda found: self.texts[int(found.group(1))], value)


# What mdurl.encode leaves as it is: a URL made only of these needs no encoding (most do).
_ENCODED = re.compile(r"(?:[A-Za-z0-9;/?:@&=+$,\-_.!~*'()#]|%[0-9A-Fa-f]{2})*")


@dataclass(frozen=True, slots=True)
class _Address:
    """A `href` or `src` attribute value with placeholders in it: filled, checked and percent-encoded
    as Markdown does with an address written in the text."""

    parts: tuple[str | int, ...]  # unescaped text, and indexes into Values.texts

    def fill(self, markdown: MarkdownIt, texts: Sequence[str]) -> str:
        url = "".join(part if isinstance(part, str) else texts[part] for part in self.parts)
        # A javascript:, vbscript:, file: or data: address (but images) becomes an empty one.
        if not markdown.validateLink(url):
            return ""
        return escapeHtml(url if _ENCODED.fullmatch(url) else mdurl.encode(url))


@dataclass(frozen=True, slots=True)
class _Text:
    """Any other attribute value with placeholders in it (an image's alt text, a title)."""

    parts: tuple[str | int, ...]

    def fill(self, markdown: MarkdownIt, texts: Sequence[str]) -> str:
        return escapeHtml("".join(part if isinstance(part, str) else texts[part] for part in self.parts))


@dataclass(frozen=True, slots=True)
class Form:
    """The HTML of one Markdown text, with holes where its placeholders were."""

    pieces: tuple[str | int | _Address | _Text, ...]  # HTML, a value's index (as text), an attribute

    def fill(self, markdown: MarkdownIt, values: Values) -> str:
        texts = values.texts
        out: list[str] = []
        for piece in self.pieces:
            if isinstance(piece, str):
                out.append(piece)
            elif isinstance(piece, int):
                out.append(escapeHtml(texts[piece]))
            else:
                out.append(piece.fill(markdown, texts))
        return "".join(out)


_TAG = re.compile(r"<[^>]*>")  # text never holds a raw `<`: the renderer writes it as `&lt;`
_ATTRIBUTE = re.compile(r'([a-z][a-z0-9-]*)="([^"]*)"')


class Markdown:
    """Renders Markdown emails; one per template library. Safe to share between threads."""

    def __init__(self) -> None:
        self.markdown = _markdown_it()
        self._placeholders = _Placeholders.new()
        self._kept = functools.lru_cache(maxsize=_KEPT_FORMS)(self._form)

    def values(self) -> Values:
        return Values(self._placeholders)

    def render(self, text: str, values: Values) -> str:
        """The HTML of `text`, written with the placeholders of `values`."""
        form = self._kept(text) if len(text) <= _KEPT_UP_TO else self._form(text)
        return form.fill(self.markdown, values)

    def _form(self, text: str) -> Form:
        rendered = self.markdown.render(text)
        pieces: list[str | int | _Address | _Text] = []
        start = 0
        for tag in _TAG.finditer(rendered):
            self._text_pieces(rendered[start : tag.start()], pieces)
            self._tag_pieces(tag.group(0), pieces)
            start = tag.end()
        self._text_pieces(rendered[start:], pieces)
        merged: list[str | int | _Address | _Text] = []
        for piece in pieces:  # adjacent HTML as one string: fewer pieces to join per email
            if isinstance(piece, str) and merged and isinstance(merged[-1], str):
                merged[-1] += piece
            elif piece != "":
                merged.append(piece)
        return Form(tuple(merged))

    def _split(self, text: str) -> list[str | int]:
        parts: list[str | int] = []
        start = 0
        for found in self._placeholders.found.finditer(text):
            parts += [text[start : found.start()], int(found.group(1))]
            start = found.end()
        parts.append(text[start:])
        return parts

    def _text_pieces(self, text: str, pieces: list[str | int | _Address | _Text]) -> None:
        pieces += self._split(text)

    def _tag_pieces(self, tag: str, pieces: list[str | int | _Address | _Text]) -> None:
        start = 0
        for attribute in _ATTRIBUTE.finditer(tag):
            value = attribute.group(2)
            if self._placeholders.found.search(value) is None:
                continue
            parts = tuple(p if isinstance(p, int) else html.unescape(p) for p in self._split(value))
            pieces.append(tag[start : attribute.start(2)])
            pieces.append(_Address(parts) if attribute.group(1) in ("href", "src") else _Text(parts))
            start = attribute.end(2)
        pieces.append(tag[start:])


# --------------------------------------------------------------------------------------------------
# The Markdown dialect: what cmark-gfm with smart punctuation writes
# --------------------------------------------------------------------------------------------------


def _markdown_it() -> MarkdownIt:
    # `html` on, so that raw HTML is recognised as such and left out, not shown as text.
    markdown = MarkdownIt("commonmark", {"typographer": True, "html": True})
    markdown.enable(["table", "strikethrough", "smartquotes"])
    # Dashes and ellipses as cmark-gfm writes them, and no other replacement ((c), +-, ...).
    markdown.core.ruler.before("smartquotes", "dashes_and_ellipses", _dashes_and_ellipses)
    markdown.add_render_rule("html_block", _omitted_block)
    markdown.add_render_rule("html_inline", _omitted_inline)
    markdown.add_render_rule("s_open", _del_open)
    markdown.add_render_rule("s_close", _del_close)
    markdown.add_render_rule("th_open", _cell)
    markdown.add_render_rule("td_open", _cell)
    return markdown


_DASHES_OR_DOTS = re.compile(r"-{2,}|\.\.\.")


def _dashes(count: int) -> str:
    # cmark-gfm's rule for a run of hyphens: em dashes when it divides by 3, else en dashes when it
    # divides by 2, else em dashes followed by one or two en dashes.
    if count % 3 == 0:
        em, en = count // 3, 0
    elif count % 2 == 0:
        em, en = 0, count // 2
    elif count % 3 == 2:
        em, en = (count - 2) // 3, 1
    else:
        em, en = (count - 4) // 3, 2
    return "\u2014" * em + "\u2013" * en


def _punctuation(found: re.Match[str]) -> str:
    run = found.group(0)
    return "\u2026" if run == "..." else _dashes(len(run))


def _dashes_and_ellipses(state: StateCore) -> None:
    # Text tokens only: code spans keep their hyphens, and escaped characters (`\-`) are tokens of
    # their own until later, so they stay as written.
    for block in state.tokens:
        for token in block.children or ():
            if token.type == "text" and ("--" in token.content or "..." in token.content):
                token.content = _DASHES_OR_DOTS.sub(_punctuation, token.content)


def _omitted_block(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    return RAW_HTML_OMITTED + "\n"


def _omitted_inline(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    return RAW_HTML_OMITTED


def _del_open(renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    return "<del>"


def _del_close(renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    return "</del>"


def _cell(renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    # A column's alignment as an `align` attribute, which mail clients keep (they drop many styles).
    style = tokens[idx].attrs.pop("style", None)
    if isinstance(style, str):
        tokens[idx].attrs["align"] = style.removeprefix("text-align:")
    return renderer.renderToken(tokens, idx, options, env)
