"""Start-up: `bench --help`, `list`, `show`, `validate` and `status` import neither torch nor mmengine nor
mmdet, on a fresh cache folder too; the caches that make that possible (validated tables, row
statuses, the shipped status seed) are invalidated by every change they depend on."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "mmengine", "mmdet", "mmcv")


def _imports_after(args: list[str], cache: Path, recipes: Path | None = None) -> tuple[int, list[str], str]:
    code = ("import sys, json\nfrom bench.cli import main\nrc = 0\n"
            f"try:\n    main({args!r})\nexcept SystemExit as e:\n    rc = e.code or 0\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & set(%r))\n"
            "print('HEAVY=' + json.dumps(heavy), file=sys.stderr)\nsys.exit(rc)\n" % (HEAVY,))
    env = dict(os.environ, BENCH_CACHE=str(cache), BENCH_RESULTS=str(cache / "results"), COLUMNS="200")
    if recipes:
        env["BENCH_RECIPES"] = str(recipes)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    heavy = json.loads(proc.stderr.rsplit("HEAVY=", 1)[1].splitlines()[0])
    return proc.returncode, heavy, proc.stdout + proc.stderr


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "--json"], ["show", "csr-d2s/table-i"],
                                  ["validate"], ["status", "csr-d2s/table-ii"]])
def test_light_commands_import_no_framework_on_a_fresh_cache(tmp_path, args):
    rc, heavy, out = _imports_after(args, tmp_path / "new-cache")
    assert rc == 0, out
    assert heavy == [], f"`bench {' '.join(args)}` imported {heavy} on a fresh cache"


def test_the_shipped_status_seed_is_current():
    """The seed must be what the code computes now: otherwise run `python -m bench.rowstatus --write-seed`."""
    from bench import rowstatus
    from bench.recipes import Catalogue

    seed = json.loads(rowstatus.SEED.read_text())
    assert seed["fingerprint"] == rowstatus._fingerprint(), "stale seed: python -m bench.rowstatus --write-seed"
    from bench.resolve import model_hash

    fresh = {}
    for t in Catalogue(REPO / "recipes").tables():
        for r in t.rows:
            if r.reference_only is None:
                fresh[rowstatus._key(r)] = [x.value if hasattr(x, "value") else x for x in rowstatus._resolve(r)]
            if r.model is not None:
                try:
                    fresh[rowstatus._hash_key(r)] = [model_hash(r)]
                except Exception:  # noqa: BLE001
                    fresh[rowstatus._hash_key(r)] = [None]
    assert seed["entries"] == fresh


def test_registered_names_read_from_source_are_the_registries_bench_types():
    from bench.resolve import _types_index
    from bench.rowstatus import registered_names

    live = sorted(name for name, src in _types_index().items() if src)
    assert registered_names() == live


def test_registered_names_from_the_cache_are_the_names_the_source_holds(tmp_path, monkeypatch):
    """Each model file's names are cached by the hash of its bytes: a new cache folder (parsed), the same
    folder again (read back) and an entry of another file's bytes (ignored) give the registries' names."""
    import hashlib

    from bench import rowstatus
    from bench.resolve import _types_index

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    live = sorted(name for name, src in _types_index().items() if src)
    assert rowstatus.registered_names() == live
    stored = tmp_path / "cache" / "row-status" / f"names-v{rowstatus._NAMES_VERSION}.json"
    entries = json.loads(stored.read_text())
    assert len(entries) == len(list((REPO / "bench" / "models").glob("*.py"))) + 1
    stale = hashlib.sha256(b"an earlier version of a model file").hexdigest()[:24]
    stored.write_text(json.dumps(entries | {stale: ["NotRegisteredAnyMore"]}))
    assert rowstatus.registered_names() == live


def _copy_recipes(tmp_path: Path) -> Path:
    root = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes" / "csr-d2s", root / "csr-d2s")
    return root


def test_an_edited_recipe_is_read_again_not_served_from_the_cache(tmp_path):
    root = _copy_recipes(tmp_path)
    cache = tmp_path / "cache"
    rc, _, out = _imports_after(["list", "--json"], cache, root)
    table = next(t for t in json.loads(out.split("HEAVY=")[0]) if t["table"] == "csr-d2s/table-ii")
    assert table["rows"][0]["published"]["mask_AP"] == 34.1
    path = root / "csr-d2s" / "table-ii.yaml"
    path.write_text(path.read_text().replace("mask_AP: 34.1,", "mask_AP: 34.2,", 1))
    rc, _, out = _imports_after(["list", "--json"], cache, root)
    table = next(t for t in json.loads(out.split("HEAVY=")[0]) if t["table"] == "csr-d2s/table-ii")
    assert table["rows"][0]["published"]["mask_AP"] == 34.2
    # an included file counts too: the paper's defaults
    paper = root / "csr-d2s" / "_paper.yaml"
    paper.write_text(paper.read_text() + "\nnot: [valid\n")
    rc, _, out = _imports_after(["validate"], cache, root)
    assert rc == 1 and "_paper.yaml: not valid YAML" in out


def test_a_changed_model_spec_gets_its_own_status(tmp_path):
    root = _copy_recipes(tmp_path)
    cache = tmp_path / "cache"
    path = root / "csr-d2s" / "table-ii.yaml"
    rc, _, out = _imports_after(["show", "csr-d2s/table-ii"], cache, root)
    assert rc == 0 and "model missing" not in out
    text = path.read_text()
    # the first row's model gets a neck no registry knows: its status must say so at once
    old = "      config: bench::csr_d2s/kernel_fpn_r50_1x.py\n    published: {mask_AP: 34.1,"
    assert old in text
    path.write_text(text.replace(old, "      config: bench::csr_d2s/kernel_fpn_r50_1x.py\n"
                                      "      overrides: {model: {neck: {type: NoSuchNeck}}}\n    published: {mask_AP: 34.1,", 1))
    rc, heavy, out = _imports_after(["show", "csr-d2s/table-ii"], cache, root)
    assert rc == 0 and "not implemented: NoSuchNeck" in out, out
