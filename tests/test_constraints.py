"""constraints/cpu.txt is the stack the tests pass on: the installed versions are its versions,
and every dependency of pyproject.toml is pinned in it (issue 21: a fresh machine next year
installs what was tested, not whatever is newest)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints" / "cpu.txt"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for number, line in enumerate(CONSTRAINTS.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)", text)
        assert match, f"{CONSTRAINTS}:{number}: {line!r} is not 'name==version'"
        out[_canonical(match.group(1))] = match.group(2)
    return out


def _requirement_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    names = set()
    for req in requirements:
        if "python_version <" in req:  # a backport for older Pythons (tomli): not installed here
            continue
        names.add(_canonical(re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0]))
    return names


def test_every_dependency_is_pinned() -> None:
    missing = sorted(_requirement_names() - set(pins()))
    assert not missing, f"pin these in {CONSTRAINTS.relative_to(ROOT)} at their tested versions: {missing}"


@pytest.mark.parametrize("name", sorted(pins()))
def test_installed_version_is_the_pinned_one(name: str) -> None:
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        pytest.fail(f"{name} is pinned in constraints/cpu.txt but not installed")
    # A local build tag (torch's "+cpu") is the same release: pip's == matches it too.
    assert installed.split("+", 1)[0] == pins()[name], (
        f"{name} {installed} is installed but constraints/cpu.txt pins {pins()[name]}: run the tests on "
        "the new version and update the pin, or reinstall with -c constraints/cpu.txt"
    )
