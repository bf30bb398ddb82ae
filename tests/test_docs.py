"""The documentation's links resolve: every relative link of the README and the folder READMEs it points to names a
file of the repository, and every `#anchor` a heading of that file (GitHub's slugs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(
    p.relative_to(ROOT)
    for p in [ROOT / "README.md", *ROOT.glob("*/README.md"), *ROOT.glob("charts/*/README.md")]
    if not {".venv", ".pytest_cache"} & set(p.parts)
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens kept), spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"(?m)^#{1,6} (.+)$", re.sub(r"(?ms)^```.*?^```", "", path.read_text(encoding="utf-8")))
    return {slug(h) for h in headings}


@pytest.mark.parametrize("doc", DOCS, ids=str)
def test_every_relative_link_resolves(doc: Path) -> None:
    source = ROOT / doc
    broken = []
    for target in LINK.findall(source.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
            continue
        file_part, _, anchor = target.partition("#")
        path = (source.parent / file_part).resolve() if file_part else source
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor}")
    assert not broken, f"{doc}: {broken}"


def test_the_readme_stays_short() -> None:
    """A newcomer reads it in minutes: what the service is, the two commands, the API, configuration; the
    rest lives beside what it describes."""
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250
