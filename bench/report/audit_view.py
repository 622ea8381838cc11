"""What a report page shows of `bench audit`: the table's architecture cells (from the profile cache,
nothing built), its claims' stated figures against its cells, and its mmdet-zoo rows against the zoo's
metafiles. Below ``html`` and ``cache``, which both use it."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PageAudit:
    """What `bench audit` says about a table, for its page: architecture cells (from the profile cache,
    nothing built) and the claims' stated figures against the table's cells."""

    cells: list = field(default_factory=list)
    claims: list = field(default_factory=list)
    zoo: list = field(default_factory=list)

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        cells: dict[str, int] = {}
        for c in self.cells:
            cells[c.agreement] = cells.get(c.agreement, 0) + 1
        claims: dict[str, int] = {}
        for c in self.claims:
            claims[c.agreement] = claims.get(c.agreement, 0) + 1
        return cells, claims


def page_audit(table, catalogue=None) -> PageAudit:
    from bench.audit import audit_table, claim_checks

    out = PageAudit()
    try:
        out.cells = audit_table(table, build=False, catalogue=catalogue).cells
    except Exception:  # noqa: BLE001 - the page is written without its audit rather than not at all
        pass
    try:
        out.claims = claim_checks([table], catalogue)
    except Exception:  # noqa: BLE001
        pass
    from bench.audit import zoo_checks

    out.zoo = zoo_checks([table])
    return out


