"""The documentation covers every setting, and its links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from ondoki.support.settings import Settings, env_name

ROOT = Path(__file__).parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_every_setting_is_documented_and_in_the_shipped_config() -> None:
    # Each area documents its own settings in its docs/ page; the operations guide has most.
    documented = "\n".join(page.read_text() for page in [ROOT / "README.md", *DOCS])
    shipped = (ROOT / "configs" / "ondoki.toml").read_text()
    for field in msgspec.structs.fields(Settings):
        assert f"`{env_name(field.name)}`" in documented, field.name
        assert f"# {field.name} = " in shipped, field.name


def test_relative_links_in_the_docs_point_at_files_and_headings() -> None:
    for page in [ROOT / "README.md", *DOCS]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.is_file(), f"{page.name}: {target}"
            if anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.MULTILINE)
                slugs = {_slug(heading) for heading in headings}
                assert anchor in slugs, f"{page.name}: {target}"


def _slug(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading (GitHub's rule)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")
