"""requirements/lock.txt agrees with pyproject.toml, and the environment the tests run in was installed from it.

pyproject.toml keeps the library's ranges (for `pip install loratune`); `make` installs the lock, which pins every
package with its hashes. A dependency added to, or dropped from, one and not the other fails here, as does an
environment that did not come from the lock.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - 3.10
    import tomli as tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock.txt"
LOCK_INPUT = ROOT / "requirements" / "lock.in"
PYPROJECT = "loratune (pyproject.toml)"
LOCK_IN = "-r requirements/lock.in"


@dataclass
class Pin:
    requirement: Requirement
    hashes: int = 0
    via: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)

    @property
    def version(self) -> str:
        (spec,) = self.requirement.specifier
        return spec.version

    def applies_here(self) -> bool:
        return self.requirement.marker is None or self.requirement.marker.evaluate()


def read_lock() -> list[Pin]:
    """The lock's pins, each with its hash count and what it is required by (uv's ``# via`` comments)."""
    pins: list[Pin] = []
    in_via = False
    for line in LOCK.read_text().splitlines():
        text = line.strip()
        if line[:1].isalpha():
            pins.append(Pin(Requirement(text.rstrip("\\ "))))
            in_via = False
        elif text.startswith("--hash="):
            pins[-1].hashes += 1
        elif text.startswith("# via"):
            rest = text[len("# via"):].strip()
            pins[-1].via += [rest] if rest else []
            in_via = not rest
        elif in_via and text.startswith("#   "):
            pins[-1].via.append(text[4:].strip())
    return pins


def make_extras() -> list[str]:
    """The extras the Makefile installs (its ``EXTRAS :=`` line): the lock must hold all of them."""
    match = re.search(r"^EXTRAS := (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile: no EXTRAS line"
    return match.group(1).split()


def direct_requirements() -> list[tuple[Requirement, str]]:
    """(requirement, where it is declared) for pyproject's dependencies, the extras `make` installs, and lock.in."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [(Requirement(r), PYPROJECT) for r in project["dependencies"]]
    for extra in make_extras():
        found += [(Requirement(r), PYPROJECT) for r in project["optional-dependencies"][extra]]
    lines = [line.split("#")[0].strip() for line in LOCK_INPUT.read_text().splitlines()]
    return found + [(Requirement(line), LOCK_IN) for line in lines if line]


def test_every_direct_requirement_is_pinned_within_its_range() -> None:
    pins = read_lock()
    for requirement, source in direct_requirements():
        name = canonicalize_name(requirement.name)
        matching = [p for p in pins if p.name == name]
        assert matching, f"{requirement} ({source}) is not in {LOCK.name}: run `make lock`"
        for pin in matching:
            assert requirement.specifier.contains(pin.version, prereleases=True), \
                f"{LOCK.name} pins {pin.requirement} outside {requirement} ({source}): run `make lock`"
            assert source in pin.via, f"{LOCK.name} does not say {pin.name} comes from {source}: run `make lock`"


def test_the_lock_holds_nothing_that_no_requirement_asks_for() -> None:
    pins = read_lock()
    declared = {canonicalize_name(r.name) for r, source in direct_requirements() if source == PYPROJECT}
    from_pyproject = {p.name for p in pins if PYPROJECT in p.via}
    assert from_pyproject == declared, f"out of date (run `make lock`): {sorted(from_pyproject ^ declared)}"
    locked = {p.name for p in pins}
    for pin in pins:
        assert pin.via, f"{pin.name}: nothing requires it"
        strangers = [v for v in pin.via if v not in (PYPROJECT, LOCK_IN) and canonicalize_name(v) not in locked]
        assert not strangers, f"{pin.name} is required by {strangers}, which the lock does not hold"


def test_every_pin_is_exact_and_hashed() -> None:
    for pin in read_lock():
        assert str(next(iter(pin.requirement.specifier)).operator) == "==", pin.requirement
        assert pin.hashes >= 1, f"{pin.name} has no hash"


def test_this_environment_was_installed_from_the_lock() -> None:
    here = [p for p in read_lock() if p.applies_here()]
    assert len(here) > 100  # torch, diffusers, … with everything they pull in
    wrong = []
    for pin in here:
        try:
            installed = metadata.version(pin.name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != pin.version:
            wrong.append(f"{pin.name} {installed} (lock: {pin.version})")
    assert not wrong, f"not the lock's versions (install with `make install`): {wrong}"
