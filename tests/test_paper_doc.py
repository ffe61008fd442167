"""docs/PAPER.md is where code and configs point for the paper: every `docs/PAPER.md "## …"` citation in the
repository names one of its headings, and no file cites a document outside the repository."""
from __future__ import annotations

import re
import subprocess

from tests.conftest import REPO_ROOT

HEADINGS = {line.strip() for line in (REPO_ROOT / "docs" / "PAPER.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("## ")}
CITATION = re.compile(r'PAPER\.md\s*"(##[^"]+)"')


def _tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    for name in names.splitlines():
        if name in ("docs/PAPER.md", "tests/test_paper_doc.py"):  # they describe the citation form
            continue
        if name.endswith((".py", ".yaml", ".md", ".sh", ".toml")) and (REPO_ROOT / name).is_file():
            yield name, (REPO_ROOT / name).read_text(encoding="utf-8", errors="replace")


def test_every_citation_names_a_heading():
    cited = {(name, heading) for name, text in _tracked_text_files() for heading in CITATION.findall(text)}
    assert cited, "no file cites docs/PAPER.md"
    def unwrapped(heading: str) -> str:  # a citation wrapped over two comment lines
        return re.sub(r"\s*\n\s*#?\s*", " ", heading).strip()

    wrong = sorted(f"{name}: {heading!r}" for name, heading in cited if unwrapped(heading) not in HEADINGS)
    assert not wrong, wrong


def test_the_headings_cover_the_papers_tables_and_equations():
    text = " ".join(HEADINGS)
    for part in ("Eq. 4", "Eq. 6", "Eq. 8", "Eq. 9", "Table 1", "Table 2", "Table 3", "Table 4", "Table 5",
                 "Tables 6–7", "Appendix B", "Appendix C", "Figures 2–5"):
        assert part in text, part
