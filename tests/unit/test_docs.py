"""The documentation (README and docs/) lists every setting there is."""

from __future__ import annotations

from pathlib import Path

import msgspec

from ondoki.support.settings import Settings, env_name

ROOT = Path(__file__).parents[2]


def test_every_setting_is_documented_and_in_the_shipped_config() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    documented = "\n".join(page.read_text() for page in pages)
    shipped = (ROOT / "configs" / "ondoki.toml").read_text()
    for field in msgspec.structs.fields(Settings):
        assert f"`{env_name(field.name)}`" in documented, field.name
        assert f"# {field.name} = " in shipped, field.name
