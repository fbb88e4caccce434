"""The README documents every setting there is."""

from __future__ import annotations

from pathlib import Path

import msgspec

from ondoki.support.settings import Settings, env_name

ROOT = Path(__file__).parents[2]


def test_every_setting_is_in_the_readme_and_the_shipped_config() -> None:
    readme = (ROOT / "README.md").read_text()
    shipped = (ROOT / "configs" / "ondoki.toml").read_text()
    for field in msgspec.structs.fields(Settings):
        assert f"`{env_name(field.name)}`" in readme, field.name
        assert f"# {field.name} = " in shipped, field.name
