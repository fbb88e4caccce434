"""The README documents every setting there is."""

from __future__ import annotations

from pathlib import Path

import msgspec

from ondoki.support.settings import Settings, env_name

ROOT = Path(__file__).parents[2]


def test_every_setting_is_in_the_readme_and_the_shipped_config() -> None:
    # The README, or the document of the area a setting belongs to (docs/*.md).
    readme = "\n".join(
        path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    )
    shipped = (ROOT / "configs" / "ondoki.toml").read_text()
    for field in msgspec.structs.fields(Settings):
        assert f"`{env_name(field.name)}`" in readme, field.name
        assert f"# {field.name} = " in shipped, field.name
