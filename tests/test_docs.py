"""The README stays a five-minute read, and no link in it or in the pages it leads to is broken."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text()) < 8_500


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    targets = [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", t)]  # not http:, mailto:
    assert page.name != "README.md" or targets  # the README does link its pages
    for target in targets:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor:
            assert anchor in anchors(linked), f"{page.name} links to {target}, a heading that does not exist"


IMPORT = re.compile(r"^\s*(from jaxmnist[\w.]* import [\w, ]+|import jaxmnist[\w.]*)\s*$", flags=re.MULTILINE)
SOURCE_PATH = re.compile(r"\bjaxmnist/[\w/]+\.py\b")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_import_and_source_file_a_page_shows_exists(page):
    """A reader copies `from jaxmnist... import ...` lines and opens the files a page names: a move
    of the code must move them too."""
    text = page.read_text()
    for statement in IMPORT.findall(text):
        exec(statement, {})  # noqa: S102 - the page's own import line, nothing else
    for path in SOURCE_PATH.findall(text):
        assert (ROOT / path).is_file(), f"{page.name} names {path}, which does not exist"
