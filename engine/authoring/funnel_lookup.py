"""Finding the funnels a command names: every command that takes a funnel (`validate`, `simulate`, `map`,
`plan`, `lead enroll`, `import --funnel`, `demo-month --funnel`) takes its file, a folder of funnel
files, or its id, looked up in the funnels folder, through `find_funnels`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from engine.authoring.validation import FunnelError, LoadResult, load_funnels
from engine.core.definition import ID_PATTERN
from engine.core.webhook_targets import Targets


def is_funnel_id(ref: str) -> bool:
    """An id names a funnel in the funnels folder; anything else (or an id that is also a file or folder
    here, such as `funnels`) is a path."""
    return re.fullmatch(ID_PATTERN, ref) is not None and not Path(ref).exists()


def find_funnels(
    refs: Sequence[str], funnels_dir: Path, emails_dir: Path | None, targets: Targets | None = None
) -> LoadResult:
    """The funnels `refs` name, each a file, a folder or an id, in that order, checked as `load_funnels`
    checks them (`targets`: where `webhook` steps may call). An id is found among the funnels folder's
    valid funnels: another file of the folder with an error does not stop it; when the id is not found,
    those errors are reported with the refusal (the funnel may be the file that has them)."""
    found = LoadResult()
    folder: LoadResult | None = None
    for ref in refs:
        if not is_funnel_id(ref):
            _add(found, load_funnels([Path(ref)], emails_dir, targets))
            continue
        if folder is None:
            folder = load_funnels([funnels_dir], emails_dir, targets)
        match = [f for f in folder.funnels if f.id == ref]
        if match:
            source = folder.sources[ref]
            found.funnels.append(match[0])
            found.files.append(source)
            found.sources[ref] = source
            found.notes += [n for n in folder.notes if n.startswith(f"{source}: ") and n not in found.notes]
            continue
        found.errors.extend(e for e in folder.errors if e not in found.errors)
        known = ", ".join(sorted(f.id for f in folder.funnels)) or "none"
        found.errors.append(
            FunnelError(
                Path(ref),
                1,
                1,
                f"no funnel '{ref}': expected a funnel file, a folder of funnel files or the id of a funnel in"
                f" {funnels_dir.as_posix()}/ (found: {known})",
            )
        )
    return found


def _add(into: LoadResult, more: LoadResult) -> None:
    into.funnels.extend(more.funnels)
    into.files.extend(more.files)
    into.errors.extend(more.errors)
    into.sources.update(more.sources)
    into.notes.extend(more.notes)
