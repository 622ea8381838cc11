"""`bench list`: every table with row counts by status; --json with positions, ids, statuses, hashes."""
import json


def test_list_table(cli):
    res = cli("list")
    assert "csr-d2s/table-ii" in res.output and "sbr-cnn/table-2" in res.output


def test_list_json(cli):
    data = json.loads(cli("list", "--json").output)
    tables = {t["table"]: t for t in data}
    t2 = tables["csr-d2s/table-ii"]
    assert [r["position"] for r in t2["rows"]] == [1, 2, 3, 4]
    assert t2["rows"][0]["published"] == {"mask_AP": 34.1, "mask_AP50": 55.5, "mask_AP75": 35.7, "fps": 18.3}
    statuses = {r["status"] for t in data for r in t["rows"]}
    assert statuses <= {"runnable", "model missing", "reference only"}
    masklab = next(r for r in tables["sa-fpn/table-1"]["rows"] if r["id"] == "masklab")
    assert masklab["status"] == "reference only" and masklab["config_hash"] is None
    polar = next(r for r in tables["csr-d2s/table-i"]["rows"] if r["id"] == "polarmask")
    assert polar["status"] == "runnable" and polar["config_hash"] and polar["fidelity"] == "approximate"


def test_identical_models_share_a_config_hash(cli):
    data = {t["table"]: {r["id"]: r for r in t["rows"]} for t in json.loads(cli("list", "--json").output)}
    full = data["csr-d2s/table-ii"]["csr-d2s"]["config_hash"]
    assert full and full == data["csr-d2s/table-i"]["ours"]["config_hash"]
    assert data["csr-d2s/table-iii"]["csr-128"]["config_hash"] != data["csr-d2s/table-iii"]["csr-1024"]["config_hash"]


def test_list_counts_faithful_and_approximate_runnable_rows(cli, fidelity_recipes):
    out = cli("--recipes", str(fidelity_recipes), "list").output
    lines = out.splitlines()
    head = lines[0].split()
    assert head[:6] == ["table", "title", "rows", "runnable", "faithful", "approximate"]
    line = next(ln for ln in lines if ln.startswith("csr-d2s/table-ii "))
    # rows, runnable, faithful, approximate, model missing, reference only, refused (the title may hold digits)
    assert line.split()[-7:] == ["4", "4", "1", "1", "0", "0", "0"]
    # the total line: the approximate column's sum (this copy's csr row and the shipped recipes' own ports)
    approx = sum(int(ln.split()[-4]) for ln in lines[2:-1])
    assert approx >= 2 and lines[-1].endswith(f"rows; {approx} runnable rows run an approximate port "
                                               "(`bench show TABLE` lists the deviations)")
    data = {r["id"]: r for t in json.loads(cli("--recipes", str(fidelity_recipes), "list", "--json").output)
            if t["table"] == "csr-d2s/table-ii" for r in t["rows"]}
    assert data["csr"]["fidelity"] == "approximate" and data["d2s"]["fidelity"] == "faithful"
