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
import unicodedata
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
    markdown = MarkdownIt("commonmark", {"html": True})
    markdown.enable(["table", "strikethrough"])
    # Smart punctuation as cmark-gfm writes it, and no other replacement ((c), +-, ...). Both run
    # before escaped characters (`\"`) join the text around them, so those stay as written.
    markdown.core.ruler.before("text_join", "dashes_and_ellipses", _dashes_and_ellipses)
    markdown.core.ruler.before("text_join", "quotes", _quotes)
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


_LEFT = {"'": "\u2018", '"': "\u201c"}
_RIGHT = {"'": "\u2019", '"': "\u201d"}


def _quotes(state: StateCore) -> None:
    for block in state.tokens:
        if block.type == "inline" and block.children:
            _Quotes().paragraph(block.children)


class _Quotes:
    """Curly quotes by cmark-gfm's rule. A quote mark opens or closes by the characters around it in
    the source, as CommonMark's emphasis does (`"` before a word opens, after one closes); a closing
    mark pairs with the nearest opening one of its kind, not across the bounds of an emphasis or a
    link's text; a `'` that pairs with nothing is an apostrophe. The tokens of markup (`*`, `](...)`,
    `` ` ``) stand for the characters they were written with."""

    def __init__(self) -> None:
        # (token, offset): where each character that can matter is; markup is (None, its character).
        self.chars: list[tuple[Token | None, int | str]] = []
        self.events: list[tuple[int, str]] = []  # (position in chars, em_open, em_close, link_open, link_close)

    def paragraph(self, tokens: Sequence[Token]) -> None:
        self._flatten(tokens)
        self._pair()

    def _mark(self, text: str) -> None:
        self.chars += [(None, c) for c in text]

    def _bound(self, kind: str) -> None:
        self.events.append((len(self.chars), kind))

    def _flatten(self, tokens: Sequence[Token]) -> None:
        for token in tokens:
            kind = token.type
            if kind == "text":
                self.chars += [(token, i) for i in range(len(token.content))]
            elif kind in ("em_open", "strong_open", "s_open"):
                self._mark(token.markup)
                self._bound("em_open")
            elif kind in ("em_close", "strong_close", "s_close"):
                self._bound("em_close")
                self._mark(token.markup)
            elif kind == "link_open":
                self._mark("<" if token.info == "auto" else "[")
                self._bound("link_open")
            elif kind == "link_close":
                self._bound("link_close")
                self._mark(">" if token.info == "auto" else "]()")
            elif kind == "image":
                self._mark("![")
                self._bound("link_open")
                self._flatten(token.children or ())
                self._bound("link_close")
                self._mark("]()")
            elif kind in ("softbreak", "hardbreak"):
                self._mark("\n")
            elif kind == "code_inline":
                self._mark("``")
            elif kind == "html_inline":
                self._mark("<>")
            elif kind == "text_special":
                self._mark(token.markup)

    def _char(self, at: int) -> str:
        if not 0 <= at < len(self.chars):
            return "\n"
        token, where = self.chars[at]
        return token.content[where] if token is not None and isinstance(where, int) else str(where)

    def _pair(self) -> None:
        events = iter(self.events)
        event = next(events, None)
        openers: list[int] = []  # positions of the marks that may still open, in order
        emphases: list[int] = []  # where each open emphasis starts
        # Each link's text: where it starts, and per mark the position below which no opener is looked
        # for any more (a closer found none there).
        scopes: list[tuple[int, dict[str, int]]] = [(0, {})]
        quotes: dict[int, str] = {}
        for at in range(len(self.chars) + 1):
            while event is not None and event[0] == at:
                kind, event = event[1], next(events, None)
                if kind == "em_open":
                    emphases.append(at)
                elif kind == "link_open":
                    scopes.append((at, {}))
                else:  # what opened inside an emphasis or a link's text pairs with nothing after it
                    start = emphases.pop() if kind == "em_close" else scopes.pop()[0]
                    openers = [o for o in openers if o < start]
            mark = self._char(at) if at < len(self.chars) and self.chars[at][0] is not None else ""
            if mark not in _LEFT:
                continue
            can_open, can_close = _flanking(self._char(at - 1), self._char(at + 1))
            quotes[at] = _RIGHT[mark] if mark == "'" or can_close else _LEFT[mark]
            if can_close:
                scope, floors = scopes[-1]
                floor = max(scope, floors.get(mark, 0))
                found = [o for o in openers if o >= floor and self._char(o) == mark]
                if found:
                    openers.remove(found[-1])
                    quotes[found[-1]] = _LEFT[mark]
                else:
                    floors[mark] = at
            elif can_open:
                openers.append(at)
        self._write(quotes)

    def _write(self, quotes: dict[int, str]) -> None:
        changed: dict[int, tuple[Token, list[str]]] = {}
        for at, quote in quotes.items():
            token, where = self.chars[at]
            assert token is not None and isinstance(where, int)
            changed.setdefault(id(token), (token, list(token.content)))[1][where] = quote
        for token, content in changed.values():
            token.content = "".join(content)


def _flanking(before: str, after: str) -> tuple[bool, bool]:
    """Whether a quote mark between these characters may open and may close (CommonMark's flanking
    rules, as cmark-gfm applies them to quotes)."""
    left = not _space(after) and (not _punctuation_char(after) or _space(before) or _punctuation_char(before))
    right = not _space(before) and (not _punctuation_char(before) or _space(after) or _punctuation_char(after))
    return left and not right and before not in "])", right


def _space(char: str) -> bool:
    return char in " \t\n\r\f" or unicodedata.category(char) == "Zs"


def _punctuation_char(char: str) -> bool:
    return (char.isascii() and not char.isalnum() and char.isprintable() and char != " ") or unicodedata.category(
        char
    ).startswith("P")


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
