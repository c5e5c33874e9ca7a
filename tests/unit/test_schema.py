"""The published JSON Schema of funnel files: current, deterministic, and referenced by every funnel."""

from __future__ import annotations

import json
import re
from pathlib import Path

from engine.authoring.validation import funnel_schema, schema_text, write_schema

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "config" / "funnel.schema.json"
SCHEMA_COMMENT = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


def test_committed_schema_is_current() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == schema_text(), (
        "config/funnel.schema.json is stale: run `funnel schema` and commit the result"
    )


def test_write_schema_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "s.json", tmp_path / "b" / "s.json"
    write_schema(first)
    write_schema(second)
    text = first.read_text(encoding="utf-8")
    assert text == second.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_schema_identifies_itself_and_refuses_unknown_keys() -> None:
    schema = funnel_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "funnel.schema.json"
    assert schema["title"] == "Funnel" and schema["description"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"id", "name", "entry", "stages"}
    # Aliases are what files contain: `if`, `else`, `from`, `in`, `not`.
    assert "if" in schema["$defs"]["Branch"]["properties"]
    assert "from" in schema["$defs"]["Transition"]["properties"]
    assert "in" in schema["$defs"]["AttrCondition"]["properties"]


def test_defaults_are_written_as_in_funnel_files() -> None:
    schema = funnel_schema()
    assert schema["properties"]["allowed_lateness"]["default"] == "1d"
    window = schema["$defs"]["SendWindow"]["properties"]
    assert (window["start"]["default"], window["end"]["default"]) == ("00:00", "23:59")
    assert re.match(window["start"]["pattern"], window["start"]["default"])


def test_funnel_files_point_editors_at_the_schema() -> None:
    files = sorted((ROOT / "funnels").glob("*.yaml")) + sorted((ROOT / "tests/fixtures/valid").glob("*.yaml"))
    assert files
    for path in files:
        if path.name.endswith(".scenarios.yaml"):
            continue
        first_line = path.read_text(encoding="utf-8").splitlines()[0]
        match = SCHEMA_COMMENT.match(first_line)
        assert match, f"{path.name} must start with '# yaml-language-server: $schema=...'"
        assert (path.parent / match.group(1)).resolve() == COMMITTED.resolve(), path.name
