"""The recipe schema refuses each kind of bad input with the file, the row and the field named."""
from __future__ import annotations

import pytest

from bench.recipes import RecipeError, load_table

GOOD_ROW = """
  - id: base
    label: Baseline
    position: 1
    factors: {csr: false}
    model: {config: bench::csr_d2s/kernel_fpn_r50_1x.py}
    published: {mask_AP: 34.1}
"""
HEAD = """
include: _paper.yaml
table: table-ii
number: II
title: t
columns: [{key: csr, label: CSR}, {key: mask_AP, label: AP}, {key: mask_AP50, label: AP50}]
rows:
"""


def _err(recipe_dir, rows: str, head: str = HEAD) -> str:
    path = recipe_dir(head + rows)
    with pytest.raises(RecipeError) as e:
        load_table(path)
    msg = str(e.value)
    assert str(path) in msg
    return msg


def test_good_recipe_loads_with_defaults_and_include(recipe_dir):
    t = load_table(recipe_dir(HEAD + GOOD_ROW))
    row = t.rows[0]
    assert row.train.optimizer == "AdamW" and row.train.lr == 1e-4 and row.train.lr_steps == [8, 11]
    assert t.paper.slug == "csr-d2s" and t.name == "csr-d2s/table-ii"


def test_unknown_key_typo(recipe_dir):
    msg = _err(recipe_dir, GOOD_ROW.replace("published:", "publishd:"))
    assert "row 1 (id 'base')" in msg and "unknown key 'publishd'" in msg


def test_wrong_type(recipe_dir):
    msg = _err(recipe_dir, GOOD_ROW.replace("mask_AP: 34.1", "mask_AP: high"))
    assert "row 1 (id 'base')" in msg and "published.mask_AP" in msg


def test_unknown_metric_suggests(recipe_dir):
    msg = _err(recipe_dir, GOOD_ROW.replace("mask_AP: 34.1", "mask_AP5: 34.1"))
    assert "unknown metric 'mask_AP5'" in msg and "did you mean" in msg and "mask_AP50" in msg


def test_duplicate_row_id(recipe_dir):
    second = GOOD_ROW.replace("position: 1", "position: 2")
    msg = _err(recipe_dir, GOOD_ROW + second)
    assert "duplicate row id 'base'" in msg and "row 2" in msg


def test_duplicate_yaml_key(recipe_dir):
    msg = _err(recipe_dir, GOOD_ROW.replace("    label: Baseline\n", "    label: Baseline\n    label: Again\n"))
    assert "duplicate key 'label'" in msg


def test_rows_out_of_paper_order(recipe_dir):
    second = GOOD_ROW.replace("id: base", "id: other").replace("position: 1", "position: 3")
    msg = _err(recipe_dir, GOOD_ROW + second)
    assert "row 2 (id 'other')" in msg and "expected 2" in msg


def test_unknown_published_cell_needs_a_note(recipe_dir):
    msg = _err(recipe_dir, GOOD_ROW.replace("mask_AP: 34.1", "mask_AP: null"))
    assert "published.mask_AP is unknown (null)" in msg


def test_null_cell_with_note_is_accepted(recipe_dir):
    rows = GOOD_ROW.replace("mask_AP: 34.1}", "mask_AP: null}\n    published_notes: {mask_AP: not in the text}")
    t = load_table(recipe_dir(HEAD + rows))
    assert t.rows[0].published["mask_AP"] is None


def test_baseline_must_exist(recipe_dir):
    msg = _err(recipe_dir, GOOD_ROW + GOOD_ROW.replace("id: base", "id: csr").replace("position: 1", "position: 2")
               + "    baseline: bsae\n")
    assert "no row 'bsae'" in msg and "did you mean 'base'" in msg


def test_factor_must_be_a_column(recipe_dir):
    msg = _err(recipe_dir, GOOD_ROW.replace("{csr: false}", "{crs: false}"))
    assert "factors.crs" in msg and "did you mean 'csr'" in msg


def test_model_or_reference_required(recipe_dir):
    msg = _err(recipe_dir, GOOD_ROW.replace("    model: {config: bench::csr_d2s/kernel_fpn_r50_1x.py}\n", ""))
    assert "needs a 'model' or a 'reference_only'" in msg


def test_model_config_scope(recipe_dir):
    msg = _err(recipe_dir, GOOD_ROW.replace("bench::csr_d2s", "detectron2::csr_d2s"))
    assert "must look like 'mmdet::" in msg


def test_required_field_missing(recipe_dir):
    msg = _err(recipe_dir, GOOD_ROW.replace("    label: Baseline\n", ""))
    assert "row 1 (id 'base'), field label: required field is missing" in msg


def test_table_name_must_match_file(recipe_dir):
    path = recipe_dir(HEAD + GOOD_ROW, name="table-iii")
    with pytest.raises(RecipeError, match="does not match the file name 'table-iii'"):
        load_table(path)


def test_include_cycle(recipe_dir):
    path = recipe_dir("include: table-ii.yaml\n" + HEAD.replace("include: _paper.yaml\n", "") + GOOD_ROW)
    with pytest.raises(RecipeError, match="include cycle"):
        load_table(path)


def test_missing_include(recipe_dir):
    path = recipe_dir(HEAD.replace("_paper.yaml", "_papr.yaml") + GOOD_ROW)
    with pytest.raises(RecipeError, match="_papr.yaml: cannot read"):
        load_table(path)


def test_invalid_yaml(recipe_dir):
    path = recipe_dir(HEAD + GOOD_ROW + "  - [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_table(path)


def test_literal_field(recipe_dir):
    msg = _err(recipe_dir, GOOD_ROW + "    train: {eval_split: val2018}\n")
    assert "train.eval_split" in msg and "val2018" in msg


SECOND = """
  - id: plus
    label: Plus
    position: 2
    model: {config: bench::csr_d2s/kernel_fpn_r50_1x.py}
    published: {mask_AP: 34.9}
    baseline: base
"""


def test_structured_claims_load_and_a_string_reads_as_words(recipe_dir):
    rows = GOOD_ROW + SECOND + '    claim: [{text: "boosts by 0.8 AP", metric: mask_AP, delta: 0.8}, "and is fast"]\n'
    row = load_table(recipe_dir(HEAD + rows)).rows[1]
    assert [c.delta for c in row.claim] == [0.8, None] and row.claim_text == "boosts by 0.8 AP and is fast"
    assert [c.text for c in row.stated_claims] == ["boosts by 0.8 AP"]


@pytest.mark.parametrize("claim, words", [
    ('{text: t, metric: mask_AP5, delta: 1}', ["claim", "mask_AP5", "did you mean"]),
    ('{text: t, delta: 1}', ["claim", "needs the metric"]),
    ('{text: t, metric: mask_AP, relative: true}', ["claim", "give claim.delta"]),
    ('{text: t, metric: box_AP, delta: 1}', ["(id 'plus'), field claim[0].metric", "not among the table's columns"]),
    ('{text: t, metric: mask_AP, delta: 1, vs: bse}', ["(id 'plus'), field claim[0].vs", "no row 'bse'", "did you mean"]),
    ('{text: t, metric: mask_AP, delta: 1, vs: plus}', ["(id 'plus'), field claim[0].vs", "compared with itself"]),
    ('{txt: t}', ["claim", "txt"]),
])
def test_bad_claims_are_refused_naming_the_field(recipe_dir, claim, words):
    msg = _err(recipe_dir, GOOD_ROW + SECOND + f"    claim: {claim}\n")
    for w in words:
        assert w in msg, (w, msg)


# ------------------------------------------------------------------------------------- fidelity
REFERENCE_ROW = """
  - id: other
    label: Other
    position: 2
    reference_only: "not implemented"
    published: {mask_AP: 30.0}
"""


def test_fidelity_absent_is_unstated_and_declared_values_load(recipe_dir):
    """Absent, a row claims nothing (existing recipes stay valid); 'faithful' alone and 'approximate' with
    its deviations load as written."""
    assert load_table(recipe_dir(HEAD + GOOD_ROW)).rows[0].fidelity is None
    row = load_table(recipe_dir(HEAD + GOOD_ROW + "    fidelity: faithful\n")).rows[0]
    assert row.fidelity == "faithful" and row.deviations == []
    row = load_table(recipe_dir(HEAD + GOOD_ROW + '    fidelity: approximate\n    deviations: ["two towers", "no DCN"]\n')).rows[0]
    assert row.fidelity == "approximate" and row.deviations == ["two towers", "no DCN"]


@pytest.mark.parametrize("extra, words", [
    ("    fidelity: exact\n", ["row 1 (id 'base'), field fidelity", "'faithful' or 'approximate'", "'exact'"]),
    ("    fidelity: approximate\n", ["row 1 (id 'base'), field deviations", "must say how it differs"]),
    ("    fidelity: approximate\n    deviations: []\n", ["row 1 (id 'base'), field deviations", "must say how it differs"]),
    ('    fidelity: approximate\n    deviations: ["  "]\n', ["row 1 (id 'base'), field deviations", "empty deviation"]),
    ('    fidelity: faithful\n    deviations: ["no DCN"]\n', ["row 1 (id 'base'), field deviations", "is 'faithful'"]),
    ('    deviations: ["no DCN"]\n', ["row 1 (id 'base'), field deviations", "is 'absent'"]),
    ('    fidelity: approximate\n    deviations: no DCN\n', ["row 1 (id 'base'), field deviations", "list"]),
    ('    fidelity: approximate\n    deviations: [{what: x}]\n', ["row 1 (id 'base'), field deviations.0", "string"]),
])
def test_bad_fidelity_is_refused_naming_file_row_and_field(recipe_dir, extra, words):
    msg = _err(recipe_dir, GOOD_ROW + extra)
    for w in words:
        assert w in msg, (w, msg)


def test_fidelity_on_a_reference_only_row_is_refused(recipe_dir):
    msg = _err(recipe_dir, GOOD_ROW + REFERENCE_ROW + "    fidelity: faithful\n")
    assert "row 2 (id 'other'), field fidelity: a reference-only row runs nothing" in msg


def test_every_shipped_recipe_is_valid_and_states_fidelity_with_its_deviations():
    """The shipped recipes load under the schema; an approximate row always says how it differs."""
    from bench.recipes import Catalogue

    rows = [r for t in Catalogue().tables() for r in t.rows]
    assert len(rows) > 150
    for r in rows:
        assert (r.fidelity == "approximate") == bool(r.deviations), r.id
        assert r.fidelity is None or r.reference_only is None, r.id
