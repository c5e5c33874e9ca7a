"""The bounds an email template renders within: a template is content, not a program.

A marketer's template can ask for `{{ x | center(50000000) }}`, `'{:>50000000}'.format(x)` or a loop of
a hundred thousand iterations inside another; each of those held a send or `funnel validate` for
seconds to minutes and built strings of 50 to 100 MB. So, in one rendering of one email:

- no text a template builds is longer than `MAX_TEXT_CHARS`: each part as it is written out (subject,
  body, layout, text part), each capture (a macro, `{% set %}...{% endset %}`), each string a filter, a
  method, `~`, `+`, `*` or `%` makes. The size is judged before the text is built wherever it can be
  computed (a width, a repeat count, the parts of a join), so nothing that large is ever allocated;
  lists and mappings are measured without being turned into text;
- loop iterations and calls together are at most `MAX_RENDER_STEPS`;
- rendering takes at most `MAX_RENDER_SECONDS` of the rendering thread's CPU time, checked at every
  iteration and call: the backstop for work a count cannot see (a sort of a long list in each
  iteration). CPU time, not wall time: a busy machine must not fail a template that a quiet one passes.

Going past a bound raises `TemplateBound` inside the template's own code, so the error names the file
and line (engine.mail.templates turns it into a TemplateError). The sandbox is Jinja2's immutable one with
public hooks: `call`, `call_binop`, `wrap_str_format`, the environment's `concat`, bounded filters,
and `compile`, which makes every `{% for %}` count its iterations and every `~` measure its parts.
"""

from __future__ import annotations

import re
import time
import types
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from functools import update_wrapper
from itertools import chain
from typing import Any, Literal, overload

from jinja2 import Environment, nodes, pass_eval_context
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, LoopContext, markup_join, str_join
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import Namespace, generate_lorem_ipsum
from jinja2.visitor import NodeTransformer
from markupsafe import EscapeFormatter, Markup

# A hundred times the longest example email (10 KB): Gmail clips a message at 102 KB.
MAX_TEXT_CHARS = 1_000_000
# A real email loops over a few items and calls `link()` a few times.
MAX_RENDER_STEPS = 100_000
# A real email renders in a few milliseconds.
MAX_RENDER_SECONDS = 2.0
# Items a list a template builds may hold (Jinja2's own bound on `range`).
MAX_ITEMS = MAX_RANGE
MAX_POWER_BITS = 4096
MAX_REPEAT_LENGTH = 10_000

_LOOP_FILTER = "_counted"  # wraps the iterable of every `{% for %}` (see BoundedSandbox.compile)
_CONCAT_FILTER = "_joined"  # stands for every `~`


class TemplateBound(SecurityError):
    """A template went past one of the bounds above."""


def _too_long(what: str) -> TemplateBound:
    return TemplateBound(
        f"{what} would build more than {MAX_TEXT_CHARS:,} characters (the most a template may build or write)"
    )


# --------------------------------------------------------------------------------------------------
# One rendering's budget of steps and time
# --------------------------------------------------------------------------------------------------


class RenderBudget:
    """Steps (loop iterations and calls) and time left to one rendering of one email."""

    __slots__ = ("deadline", "steps")

    def __init__(self) -> None:
        self.steps = MAX_RENDER_STEPS
        self.deadline = time.thread_time() + MAX_RENDER_SECONDS

    def step(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise TemplateBound(
                f"more than {MAX_RENDER_STEPS:,} loop iterations and calls in one email: an email template is"
                " content, not a program"
            )
        if time.thread_time() > self.deadline:
            raise TemplateBound(
                f"rendering took more than {MAX_RENDER_SECONDS:g} s of CPU time: an email template is content,"
                " not a program"
            )


_BUDGET: ContextVar[RenderBudget | None] = ContextVar("render_budget", default=None)


@contextmanager
def render_budget() -> Iterator[RenderBudget]:
    """The budget of one email's rendering: every template part rendered inside shares it."""
    budget = RenderBudget()
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def _step() -> None:
    budget = _BUDGET.get()
    if budget is not None:  # outside a rendering (compiling, folding constants) nothing is counted
        budget.step()


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    for item in iterable:
        _step()
        yield item


# --------------------------------------------------------------------------------------------------
# Sizes of text, measured before it is built
# --------------------------------------------------------------------------------------------------

_CONTAINERS = (list, tuple, set, frozenset, dict)


def text_size(value: Any, limit: int = MAX_TEXT_CHARS) -> int:
    """About how many characters `str(value)` has, found without building it; counting stops past
    `limit`. Lists and mappings are walked (a list of ten references to a list of ten references to a
    long text is small in memory and huge as text)."""
    if isinstance(value, str | bytes):
        return len(value)
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item) + 2  # quoted
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, dict):
            total += 2 + 4 * len(item)
            stack.extend(chain.from_iterable(item.items()))
        elif isinstance(item, _CONTAINERS):
            total += 2 + 2 * len(item)
            stack.extend(item)
        elif isinstance(item, Namespace):
            raise TemplateBound("a namespace() is not text: write out one of its attributes")
        else:
            total += 32  # a number or an object of the engine: its text is short
    return total


def _check(size: int, what: str) -> None:
    if size > MAX_TEXT_CHARS:
        raise _too_long(what)


def check_written(value: Any) -> None:
    """For a value about to be written out as text (the template's `finalize`)."""
    if isinstance(value, (*_CONTAINERS, Namespace)):
        _check(text_size(value), "writing out this value")


def too_much_written() -> TemplateBound:
    """The error for output past the bound, raised where it is written."""
    return TemplateBound(f"writing more than {MAX_TEXT_CHARS:,} characters (the most a template may build or write)")


def bounded_concat(parts: Iterable[str]) -> str:
    """The environment's `concat`: joins a template's output (a generator, streamed and counted as it
    comes) and every capture (a list). Past the bound, a template's output is stopped inside the
    template, at the line writing it, so the error names that line."""
    if isinstance(parts, list):
        _check(sum(map(len, parts)), "this block")
        return "".join(parts)
    out: list[str] = []
    size = 0
    for part in parts:
        size += len(part)
        if size > MAX_TEXT_CHARS:
            error = too_much_written()
            if isinstance(parts, Generator):
                parts.throw(error)
            raise error
        out.append(part)
    return "".join(out)


@pass_eval_context
def _joined(eval_ctx: EvalContext, items: list[Any]) -> str:
    """`a ~ b`: Jinja2's own join (text, or markup when autoescaping), once the parts are measured."""
    _check(sum(text_size(item) for item in items), "'~'")
    return markup_join(items) if eval_ctx.autoescape else str_join(items)


def _lipsum(*args: Any, **kwargs: Any) -> str:
    """`lipsum(n, html, min, max)`, at most MAX_TEXT_CHARS of it (a word is under 12 characters)."""
    named = dict(zip(("n", "html", "min", "max"), args, strict=False)) | kwargs
    paragraphs, longest = named.get("n", 5), named.get("max", 100)
    if isinstance(paragraphs, int) and isinstance(longest, int) and paragraphs * longest * 12 > MAX_TEXT_CHARS:
        raise _too_long(f"lipsum({paragraphs:,})")
    return str(generate_lorem_ipsum(*args, **kwargs))


# --------------------------------------------------------------------------------------------------
# printf-style and str.format formatting
# --------------------------------------------------------------------------------------------------

_PRINTF = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[-#0 +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d*))?[hlL]?(?P<kind>.)", re.DOTALL
)
_NUMBER_TEXT = 32  # a number's digits beyond its width and precision


def _digits(text: str | None) -> int:
    if not text or text == "*":
        return 0
    return int(text) if len(text) <= 9 else MAX_TEXT_CHARS + 1


def printf_size(fmt: str, args: Any) -> int:
    """An upper bound on the length of `fmt % args`."""
    total = len(fmt)
    mapping = args if isinstance(args, Mapping) else None
    values = list(args) if isinstance(args, tuple) else [args]
    star = unkeyed = False
    for match in _PRINTF.finditer(fmt):
        if match["kind"] == "%":
            continue
        star = star or "*" in (match["width"], match["precision"])
        total += _digits(match["width"]) + _digits(match["precision"]) + _NUMBER_TEXT
        if mapping is not None and match["key"] is not None:
            total += text_size(mapping.get(match["key"]))
        else:
            unkeyed = True
        if total > MAX_TEXT_CHARS:
            return total
    if mapping is None or unkeyed:
        total += sum(text_size(value) for value in values)
    if star:  # `%*s`: the width is one of the arguments
        total += sum(abs(v) for v in values if isinstance(v, int))
    return total


def _printf(fmt: Any, args: Any) -> None:
    if isinstance(fmt, str):
        _check(printf_size(fmt, args), "'%' formatting")


_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>\d*)[_,]?(?:\.(?P<precision>\d+))?[a-zA-Z%]?", re.DOTALL)


class _BoundedFormatter(SandboxedFormatter):
    """str.format in the sandbox, measuring each field before it is formatted."""

    def __init__(self, env: Environment, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self.written = 0

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:
            _check(text_size(value), "str.format")
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        spec = _SPEC.fullmatch(format_spec)
        if spec is None:  # a type's own format, such as a date's '%Y-%m-%d'
            size = 32 * len(format_spec) + text_size(value)
        else:
            size = _digits(spec["width"]) + _digits(spec["precision"]) + text_size(value) + _NUMBER_TEXT
        self.written += size
        _check(self.written, "str.format")
        return super().format_field(value, format_spec)


class _BoundedEscapeFormatter(_BoundedFormatter, EscapeFormatter):
    """The same for Markup's format, which escapes each field."""


# --------------------------------------------------------------------------------------------------
# Filters: each text filter measures what it is given and what it returns; those that multiply
# (widths, separators, repeats) measure the result before building it
# --------------------------------------------------------------------------------------------------


def _center(value: Any, width: Any = 80) -> None:
    if isinstance(width, int):
        _check(max(text_size(value), width), f"center({width:,})")


def _indent(value: Any, width: Any = 4, *_: Any, **__: Any) -> None:
    text = value if isinstance(value, str) else ""
    indent = width if isinstance(width, int) else len(str(width))
    _check(text_size(value) + (text.count("\n") + 1) * indent, "indent")


def _wordwrap(value: Any, width: Any = 79, *args: Any, wrapstring: Any = None, **_: Any) -> None:
    if len(args) > 1:  # (break_long_words, wrapstring, ...) given in order
        wrapstring = args[1]
    size = text_size(value)
    # At most a line per character; each line ends with the wrap string.
    _check(size + (size + 1) * len(wrapstring if isinstance(wrapstring, str) else "\n"), "wordwrap")


def _format(value: Any, *args: Any, **kwargs: Any) -> None:
    _printf(value, kwargs or args)


def _replace(value: Any, old: Any = "", new: Any = "", count: Any = None) -> None:
    _check(_replaced_size(value, old, new, count), "replace")


def _replaced_size(value: Any, old: Any, new: Any, count: Any) -> int:
    """An upper bound on the length of `value` with `old` replaced by `new`."""
    found = _occurrences(value, old)
    if found is None:  # an empty `old` matches between every two characters; other values are turned into text
        found = text_size(value) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return text_size(value) + found * text_size(new)


def _occurrences(value: Any, old: Any) -> int | None:
    if isinstance(value, str) and isinstance(old, str) and old:
        return value.count(old)
    if isinstance(value, bytes) and isinstance(old, bytes) and old:
        return value.count(old)
    return None


def _many(what: str, count: Any) -> None:
    if isinstance(count, int) and count > MAX_ITEMS:
        raise TemplateBound(f"{what} would make more than {MAX_ITEMS:,} items")


def _tojson(value: Any, indent: Any = None) -> None:
    size = text_size(value)
    if isinstance(indent, int):  # each line indented again at each level: a bound, not a count
        size *= 1 + max(indent, 0)
    _check(size, "tojson")


_PRECHECKS: dict[str, Callable[..., None]] = {
    "center": _center,
    "indent": _indent,
    "wordwrap": _wordwrap,
    "format": _format,
    "replace": _replace,
    "tojson": _tojson,
    "batch": lambda value, linecount=0, *_, **__: _many(f"batch({linecount:,})", linecount),
    "slice": lambda value, slices=0, *_, **__: _many(f"slice({slices:,})", slices),
}
# Filters that turn what they are given into text or a list: its size is measured first, and theirs after.
_TEXT_FILTERS = (
    *_PRECHECKS,
    *("capitalize", "e", "escape", "forceescape", "list", "lower", "pprint", "safe", "string", "striptags"),
    *("title", "trim", "truncate", "upper", "urlencode", "urlize", "wordcount", "xmlattr"),
)


def _measured(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    precheck = _PRECHECKS.get(name)
    # A filter that takes the context, environment or evaluation context gets it first (Jinja2 marks it).
    skip = 1 if getattr(original, "jinja_pass_arg", None) is not None else 0

    def measured(*args: Any, **kwargs: Any) -> Any:
        if len(args) > skip:
            _check(text_size(args[skip]), name)
            if precheck is not None:
                with suppress(TypeError):  # arguments the filter itself refuses, in its own words
                    precheck(*args[skip:], **kwargs)
        return _checked_result(original(*args, **kwargs), name)

    return update_wrapper(measured, original)


def _checked_result(result: Any, what: str) -> Any:
    """Text is measured by its length; a list or mapping by its items (its text is measured where it is
    written out or joined)."""
    if isinstance(result, str | bytes):
        if len(result) > MAX_TEXT_CHARS:
            raise _too_long(what)
    elif isinstance(result, _CONTAINERS) and len(result) > MAX_ITEMS:
        raise TemplateBound(f"{what} would make more than {MAX_ITEMS:,} items")
    return result


def _join(original: Callable[..., Any]) -> Callable[..., Any]:
    def join(eval_ctx: EvalContext, value: Iterable[Any], d: Any = "", attribute: Any = None) -> Any:
        items = list(value)
        if attribute is not None:
            items = list(map(make_attrgetter(eval_ctx.environment, attribute), items))
        _check(sum(text_size(i) for i in items) + text_size(d) * max(len(items) - 1, 0), "join")
        return original(eval_ctx, items, d)

    return update_wrapper(join, original)


def _sum(original: Callable[..., Any]) -> Callable[..., Any]:
    def total(environment: Environment, iterable: Iterable[Any], attribute: Any = None, start: Any = 0) -> Any:
        items = list(iterable)
        if attribute is not None:
            items = list(map(make_attrgetter(environment, attribute), items))
        if isinstance(start, list | tuple) and all(type(i) is type(start) for i in items):
            # Adding lists one by one copies the total each time: joined once instead, after counting.
            _many("sum", len(start) + sum(len(i) for i in items))
            return type(start)(chain(start, *items))
        return original(environment, items, start=start)

    return update_wrapper(total, original)


def bounded_filters(filters: Mapping[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    out = dict(filters)
    for name in _TEXT_FILTERS:
        out[name] = _measured(name, filters[name])
    out["join"] = _measured("join", _join(filters["join"]))
    out["sum"] = _sum(filters["sum"])
    out[_LOOP_FILTER] = _counted
    out[_CONCAT_FILTER] = _joined
    return out


# --------------------------------------------------------------------------------------------------
# Methods of text called from a template
# --------------------------------------------------------------------------------------------------


def _method_args(owner: str | bytes, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Measures the result of `owner.name(*args)` where it can grow past its owner; the arguments to
    call it with (a join's items, once read)."""
    first = args[0] if args else None
    if name in ("center", "ljust", "rjust", "zfill"):
        width = first if first is not None else kwargs.get("width")
        if isinstance(width, int):
            _check(max(len(owner), width), f"{name}({width:,})")
    elif name == "expandtabs":
        size = first if first is not None else kwargs.get("tabsize", 8)
        tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
        if isinstance(size, int):
            _check(len(owner) + tabs * max(size, 0), "expandtabs")
    elif name == "replace" and len(args) >= 2:
        _check(_replaced_size(owner, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count")), "replace")
    elif name == "join" and isinstance(first, Iterable):
        items = list(first)
        _check(sum(text_size(i) for i in items) + len(owner) * max(len(items) - 1, 0), "join")
        return (items, *args[1:])
    elif name == "translate" and isinstance(first, Mapping):
        longest = max((text_size(v) for v in first.values()), default=1)
        _check(len(owner) * max(longest, 1), "translate")
    return args


# --------------------------------------------------------------------------------------------------
# The sandbox
# --------------------------------------------------------------------------------------------------


def _measure_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "**":
        if (
            isinstance(left, int)
            and isinstance(right, int)
            and max(abs(left).bit_length(), 1) * abs(right) > MAX_POWER_BITS
        ):
            raise SecurityError("number too large for a template")
    elif operator == "*":
        for seq, times in ((left, right), (right, left)):
            sized = isinstance(seq, str | bytes | list | tuple) and isinstance(times, int)
            if sized and len(seq) * times > MAX_REPEAT_LENGTH:
                raise SecurityError("repetition too large for a template")
    elif operator == "+":
        if isinstance(left, str | bytes) and isinstance(right, str | bytes):
            _check(len(left) + len(right), "'+'")
        elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
            _many("'+'", len(left) + len(right))
    elif operator == "%":
        _printf(left, right)


class _Counting(NodeTransformer):
    """Every `{% for %}` counts its iterations; every `~` measures its parts."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)  # type: ignore[assignment]
        node.iter = nodes.Filter(node.iter, _LOOP_FILTER, [], [], None, None, lineno=node.iter.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)  # type: ignore[assignment]
        parts = nodes.List(node.nodes, lineno=node.lineno)
        return nodes.Filter(parts, _CONCAT_FILTER, [], [], None, None, lineno=node.lineno)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, bounded as this module says."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    concat = staticmethod(bounded_concat)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.filters = bounded_filters(self.filters)
        self.globals["lipsum"] = _lipsum

    @overload
    def compile(
        self,
        source: str | nodes.Template,
        name: str | None = None,
        filename: str | None = None,
        raw: Literal[False] = False,
        defer_init: bool = False,
    ) -> types.CodeType: ...

    @overload
    def compile(
        self,
        source: str | nodes.Template,
        name: str | None = None,
        filename: str | None = None,
        raw: Literal[True] = ...,
        defer_init: bool = False,
    ) -> str: ...

    def compile(
        self,
        source: str | nodes.Template,
        name: str | None = None,
        filename: str | None = None,
        raw: bool = False,
        defer_init: bool = False,
    ) -> str | types.CodeType:
        tree = self.parse(source, name, filename) if isinstance(source, str) else source
        tree = _Counting().visit(tree)
        tree.set_environment(self)
        return super().compile(tree, name, filename, raw, defer_init)  # type: ignore[call-overload,no-any-return]

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _step()
        if isinstance(obj, LoopContext) and args:  # `loop(children)` in a recursive loop
            args = (_counted(args[0]), *args[1:])
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "")
        if isinstance(owner, str | bytes):
            args = _method_args(owner, name, args, kwargs)
        return _checked_result(super().call(context, obj, *args, **kwargs), f"{name}()" if name else "this call")

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _measure_binop(operator, left, right)
        return _checked_result(super().call_binop(context, operator, left, right), f"'{operator}'")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """str.format and format_map, measured field by field (Jinja2's own wrapper, with its formatter)."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        owner = value.__self__
        if not isinstance(owner, str):
            return None
        is_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument, and no keyword arguments")
                kwargs, args = args[0], ()
            formatter = (
                _BoundedEscapeFormatter(self, escape=owner.escape)
                if isinstance(owner, Markup)
                else _BoundedFormatter(self)
            )
            return type(owner)(formatter.vformat(owner, args, kwargs))

        return update_wrapper(wrapper, value)

    def make_globals(self, d: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
        # Jinja2's ChainMap is copied into a dict for every render and include, key by key in Python;
        # the globals never change after a template is loaded, so one flat dict says the same.
        return {**self.globals, **(d or {})}


__all__ = [
    "MAX_ITEMS",
    "MAX_RENDER_SECONDS",
    "MAX_RENDER_STEPS",
    "MAX_TEXT_CHARS",
    "BoundedSandbox",
    "TemplateBound",
    "check_written",
    "render_budget",
    "text_size",
]
