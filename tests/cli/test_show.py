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
    assert rows["polarmask"]["status"] == "runnable" and rows["polarmask"]["fidelity"] == "approximate"
    assert rows["polarmask"]["deviations"] and rows["knet"]["fidelity"] is None
    assert rows["mask-rcnn"]["published"]["params_M"] == 44.17


def test_show_unknown_and_ambiguous(cli):
    res = cli("show", "tabel-ii", expect=1)
    assert "did you mean" in res.output
    res = cli("show", "table-1", expect=1)
    assert "ambiguous" in res.output and "isda/table-1" in res.output


def test_show_gives_each_rows_fidelity_and_lists_the_deviations(cli, fidelity_recipes):
    """A port declared approximate is never shown as the original: its fidelity beside its status, and
    every deviation in the notes; a row that states none shows no fidelity word."""
    from tests.conftest import DEVIATIONS

    out = cli("--recipes", str(fidelity_recipes), "show", "csr-d2s/table-ii").output
    lines = {ln.split("│")[2].strip(): ln for ln in out.splitlines() if ln.count("│") > 3 and ln.split("│")[1].strip().isdigit()}
    assert lines["+ CSR"].rstrip("│ ").endswith("approximate")
    assert lines["+ D2S"].rstrip("│ ").endswith("faithful")
    assert lines["Baseline (FPN)"].rstrip("│ ").endswith("runnable")          # unstated: nothing after the status
    for d in DEVIATIONS:
        assert f"row 2 (csr): approximate port: {d}" in out
    rows = {r["id"]: r for r in json.loads(cli("--recipes", str(fidelity_recipes), "show", "csr-d2s/table-ii",
                                               "--json").output)["rows"]}
    assert rows["csr"]["fidelity"] == "approximate" and rows["csr"]["deviations"] == DEVIATIONS
    assert rows["d2s"]["fidelity"] == "faithful" and rows["d2s"]["deviations"] == []
    assert rows["baseline-fpn"]["fidelity"] is None
