"""The one way a file of a configured folder is read: `FolderLoader`, a Jinja2 loader rooted at a folder
(`emails/`, `pages/`; `funnels/` uses its `find`). Every name, whether the settings give it (a form's
page, a confirmation email), a funnel (a step's email), a template (`{% include %}`, `{% extends %}`,
`{% import %}`, a layout) or a folder's listing (a funnel file), is resolved to the real file it
reaches, symbolic links followed, and refused unless that file lies inside the folder's own real path.

Git stores symbolic links, so whoever can commit to `emails/` could otherwise add
`_partials/notes.txt -> ../../.env` and mail the server's secrets. Links that stay inside the folder
are fine (one partial under two names), and so is a folder that is itself reached through a link.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import jinja2
from jinja2 import nodes
from jinja2.loaders import split_template_path

_REFERENCES = (nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport)


class OutsideFolder(jinja2.TemplateError):
    """A name that reaches a file outside its folder (through a link). The message names the link and
    where it leads, never what that file holds."""

    def __init__(self, name: str, folder: Path, target: Path) -> None:
        super().__init__(
            f"'{name}' leads outside {folder.as_posix()} (to {target.as_posix()}): only files inside it are read"
        )
        self.name = name


@dataclass(frozen=True, slots=True)
class Located:
    """Where a problem is written: a template file (as the folder displays it) and a line."""

    path: str
    line: int
    message: str


class FolderLoader(jinja2.BaseLoader):
    """Loads templates by name from `folder`, only from inside it (see the module's docstring).
    `..` in a name is refused as not found, as Jinja2's own loader does."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def display(self, name: str) -> str:
        """How a file is named in errors and tracebacks: by the path written, not where a link leads."""
        return (self.folder / name).as_posix()

    def find(self, name: str) -> Path | None:
        """The real file `name` reaches inside the folder, or None if there is none. Raises OutsideFolder
        when it reaches a file outside. The caller reads the returned path, the very file checked."""
        path = self.folder.joinpath(*split_template_path(name))
        if not path.is_file():
            return None
        real = path.resolve()
        if not real.is_relative_to(self.folder.resolve()):
            raise OutsideFolder(name, self.folder, real)
        return real

    def read(self, name: str) -> str:
        path = self.find(name)
        if path is None:
            raise jinja2.TemplateNotFound(name)
        return path.read_text(encoding="utf-8")

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        path = self.find(template)
        if path is None:
            raise jinja2.TemplateNotFound(template)
        mtime = path.stat().st_mtime
        return path.read_text(encoding="utf-8"), self.display(template), lambda: _unchanged(path, mtime)

    def outside_references(self, environment: jinja2.Environment, name: str) -> list[Located]:
        """Each `{% include %}`, `{% extends %}`, `{% import %}` or `{% from %}` with a written name, in
        `name` and in every template it reaches, that leads outside the folder: where it is written and
        why. Found without rendering, so a reference behind an `{% if %}` is found too; a name computed
        while rendering is refused then."""
        found: list[Located] = []
        seen: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            try:
                source, filename, _ = self.get_source(environment, current)
                tree = environment.parse(source, current, filename)
            except (jinja2.TemplateNotFound, jinja2.TemplateSyntaxError, OutsideFolder):
                continue  # reported where it is loaded or compiled
            for node in tree.find_all(_REFERENCES):
                for target in _written_names(node.template):  # type: ignore[attr-defined]
                    try:
                        if self.find(target) is not None:
                            todo.append(target)
                    except OutsideFolder as exc:
                        found.append(Located(filename, node.lineno, str(exc)))
                    except jinja2.TemplateNotFound:
                        continue  # a `..` in the name: refused as not found when rendering
        return found

    def locate(self, exc: OutsideFolder, tb: TracebackType | None) -> Located:
        """Where a refusal raised while loading or rendering is written: the line of the template that
        names the file (Jinja2 rewrites tracebacks to template lines), else the linked file itself."""
        found = template_frame(tb, self.folder)
        path, line = found if found is not None else (self.display(exc.name), 1)
        return Located(path, line, str(exc))


def template_frame(tb: TracebackType | None, folder: Path) -> tuple[str, int] | None:
    """The innermost traceback frame that is template code from `folder`, as (file, line); the `#` part
    of a virtual name (an email's `#subject`) is left out of the file."""
    prefix = folder.as_posix().rstrip("/") + "/"
    found: tuple[str, int] | None = None
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.startswith(prefix):
            found = (filename.partition("#")[0], tb.tb_lineno)
        tb = tb.tb_next
    return found


def _written_names(node: nodes.Node) -> Iterator[str]:
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, nodes.Tuple | nodes.List):  # `{% include ['a.html', 'b.html'] %}`
        for item in node.items:
            yield from _written_names(item)


def _unchanged(path: Path, mtime: float) -> bool:
    return path.is_file() and path.stat().st_mtime == mtime
