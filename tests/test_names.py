"""Table names: PAPER/TABLE, a unique bare TABLE, refusals for ambiguous and unknown names."""
import pytest

from bench.recipes import Catalogue, RecipeError


@pytest.fixture(scope="module")
def cat():
    return Catalogue()


def test_full_name(cat):
    assert cat.resolve("csr-d2s/table-ii") == "csr-d2s/table-ii"
    assert cat.resolve("CSR-D2S/Table-II.yaml") == "csr-d2s/table-ii"


def test_unique_bare_name(cat):
    assert cat.resolve("table-ii") == "csr-d2s/table-ii"


def test_ambiguous_bare_name_lists_candidates(cat):
    hits = [n for n in cat.names() if n.endswith("/table-1")]
    if len(hits) < 2:  # true once a second paper numbers its tables 1, 2, ...
        pytest.fail(f"expected several papers with a table-1, found {hits}")
    with pytest.raises(RecipeError) as e:
        cat.resolve("table-1")
    for h in hits:
        assert h in str(e.value)
    assert "ambiguous" in str(e.value)


def test_unknown_name_did_you_mean(cat):
    with pytest.raises(RecipeError, match=r"unknown table 'tabel-ii' \(did you mean 'table-ii'"):
        cat.resolve("tabel-ii")
    with pytest.raises(RecipeError, match="did you mean .*'csr-d2s/table-ii'"):
        cat.resolve("csr-d2s/table-ij")


def test_every_table_of_the_five_papers_is_there(cat):
    expected = (["csr-d2s/table-i", "csr-d2s/table-ii", "csr-d2s/table-iii"]
                + [f"amf-sparseinst/table-{i}" for i in range(4, 11)]
                + [f"isda/table-{i}" for i in range(1, 4)]
                + [f"sa-fpn/table-{i}" for i in range(1, 6)]
                + [f"sbr-cnn/table-{i}" for i in range(1, 12)])
    assert sorted(cat.names()) == sorted(expected)
