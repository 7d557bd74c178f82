"""docs/settings.md is generated from the declarations and must not drift."""

from __future__ import annotations

from pathlib import Path

from m2gate.config import docs
from m2gate.config.declare import env_var, flag
from m2gate.config.settings import settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_committed_doc_matches_the_declarations() -> None:
    assert DOC.read_text(encoding="utf-8") == docs.render(), (
        "docs/settings.md is stale: run `make docs`"
    )


def test_every_setting_is_documented_with_flag_env_and_key() -> None:
    text = docs.render()
    for f, meta, _ in settings():
        assert "### `%s`" % f.name in text
        assert env_var(f.name) in text
        if not meta.positional:
            assert "`%s`" % flag(f.name) in text


def test_sections_are_grouped_in_declaration_order() -> None:
    text = docs.render()
    order: list[str] = []
    for _, meta, _ in settings():
        if meta.section not in order:
            order.append(meta.section)
    positions = [text.index("\n## %s\n" % section) for section in order]
    assert positions == sorted(positions)
