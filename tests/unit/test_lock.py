"""The lock files are in step with pyproject.toml, and the installs use them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pins(lock: str) -> dict[str, set[str]]:
    """Package name -> the versions `lock` pins (two under different markers at most)."""
    found: dict[str, set[str]] = {}
    text = (ROOT / "requirements" / lock).read_text()
    for name, version in re.findall(r"^([A-Za-z0-9._-]+)==([^ ;\\\n]+)", text, re.MULTILINE):
        found.setdefault(canonicalize_name(name), set()).add(version)
    return found


def wanted(*extras: str) -> list[Requirement]:
    lines = list(PROJECT["dependencies"])
    for extra in extras:
        lines += PROJECT["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


@pytest.mark.parametrize(("lock", "extras"), [("dev.txt", ("test", "lint")), ("runtime.txt", ())])
def test_every_declared_dependency_is_locked_inside_its_range(
    lock: str, extras: tuple[str, ...]
) -> None:
    locked = pins(lock)
    for requirement in wanted(*extras):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements/{lock}: run `make lock`"
        for version in locked[name]:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"requirements/{lock} pins {name}=={version}, outside {requirement.specifier}: "
                "run `make lock`"
            )


def test_the_runtime_lock_agrees_with_the_dev_lock() -> None:
    dev = pins("dev.txt")
    for name, versions in pins("runtime.txt").items():
        assert versions == dev.get(name), name


def test_every_pin_has_hashes() -> None:
    for lock in ("dev.txt", "runtime.txt"):
        entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / "requirements" / lock).read_text())
        for entry in entries:
            if "==" in entry.split("\n", 1)[0]:
                assert "--hash=sha256:" in entry, entry.split("\n", 1)[0]


def test_installs_use_the_locks() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -r $(DEV_LOCK)" in makefile
    assert "DEV_LOCK := requirements/dev.txt" in makefile
    dockerfile = (ROOT / "configs" / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -r requirements/runtime.txt" in dockerfile
    assert "--no-deps ." in dockerfile
