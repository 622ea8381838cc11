"""Every published accuracy cell of every recipe appears, as printed, in the paper's text.

A cheap guard against typos when recipes are edited: the number must occur in the paper text file
(shared/papers/, beside the checkout) with the precision the recipe gives it."""
from __future__ import annotations

import re
from pathlib import Path

from bench.recipes import Catalogue
from bench.vocab import AP_METRICS

PAPERS = Path(__file__).resolve().parents[2] / "shared" / "papers"


def _numbers(text: str) -> set[str]:
    # the extraction runs some cells together ("58.053.1" is 58.0 then 53.1): also read one-decimal pieces
    return set(re.findall(r"\d+\.\d+|\d+", text)) | set(re.findall(r"\d+\.\d", text))


def test_published_ap_cells_are_in_the_paper_text():
    assert PAPERS.is_dir(), f"the paper texts are expected in {PAPERS} (shared/ beside the checkout)"
    cat = Catalogue()
    missing = []
    checked = 0
    texts: dict[str, set[str]] = {}
    for t in cat.tables():
        src = t.paper.source
        if src not in texts:
            texts[src] = _numbers((PAPERS / src).read_text())
        for row in t.rows:
            for key, value in row.published.items():
                if value is None or key not in AP_METRICS:
                    continue
                checked += 1
                forms = {f"{value:.1f}", f"{value:g}", f"{value:.2f}"}
                if not forms & texts[src]:
                    missing.append(f"{t.name} row {row.id} {key}={value}")
    assert checked > 500
    assert not missing, "published cells not found in the paper text:\n" + "\n".join(missing)
