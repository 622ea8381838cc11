"""A row's status that never raises: :func:`bench.resolve.row_status`, with a row whose config cannot be
built at all (a malformed base config, a file mmengine refuses to parse) reported as
``cannot resolve: <reason>`` instead of an mmengine traceback in `bench show`, `list`, `status`, `report`."""
from __future__ import annotations

from bench.vocab import RowStatus


def safe_row_status(row) -> tuple[RowStatus, str]:
    from bench.resolve import row_status

    try:
        return row_status(row)
    except Exception as e:  # noqa: BLE001 - whatever mmengine raises, the row is what is broken
        text = str(e).strip()
        first = text.splitlines()[0] if text else ""
        return RowStatus.MODEL_MISSING, f"cannot resolve: {type(e).__name__}: {first}"[:300]
