"""`bench show TABLE`: the table as printed, published cells, row statuses; name resolution."""
import json


def test_show_table_ii(cli):
    out = cli("show", "table-ii").output
    for cell in ("34.1", "55.5", "35.7", "18.3", "35.4", "56.8", "36.9", "19.5", "Baseline"):
        assert cell in out


def test_show_json(cli):
    data = json.loads(cli("show", "csr-d2s/table-i", "--json").output)
    assert [c["key"] for c in data["columns"]][:3] == ["method", "backbone", "schedule"]
    rows = {r["id"]: r for r in data["rows"]}
    assert rows["polarmask"]["status"] == "reference only"
    assert rows["mask-rcnn"]["published"]["params_M"] == 44.17


def test_show_unknown_and_ambiguous(cli):
    res = cli("show", "tabel-ii", expect=1)
    assert "did you mean" in res.output
    res = cli("show", "table-1", expect=1)
    assert "ambiguous" in res.output and "isda/table-1" in res.output
