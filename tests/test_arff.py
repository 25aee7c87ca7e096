"""Mulan ARFF reader: the real Bibtex ARFF equals its XC conversion; small files in every row
form; each malformed input names its line and the fix."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.data.formats import read_arff, read_mulan_labels, read_xc
from recsys.errors import DataError
from tests.conftest import need

XML = """<?xml version="1.0" encoding="utf-8"?>
<labels xmlns="http://mulan.sourceforge.net/labels">
<label name="tag b"></label>
<label name='a&amp;c'></label>
</labels>
"""
# attributes: w0, 'tag b' (label), w1, a&c (label), w2; labels named in the XML in another order
HEADER = """% a comment
@relation toy
@attribute w0 numeric
@attribute 'tag b' {0,1}
@attribute w1 numeric
@attribute a&c {0,1}
@attribute "w2" numeric

@DATA
"""


def _files(tmp_path, rows: str, header: str = HEADER):
    (tmp_path / "toy.xml").write_text(XML)
    (tmp_path / "toy.arff").write_text(header + rows)
    return tmp_path / "toy.arff", read_mulan_labels(tmp_path / "toy.xml")


def test_labels_are_read_by_name_in_xml_order_and_both_row_forms_agree(tmp_path):
    arff, labels = _files(tmp_path, "{0 2.5,3 1,4 1}\n\n0,1,0.5,1,0\n{}\n")
    assert labels == ["tag b", "a&c"]
    X, Y = read_arff(arff, labels)
    assert X.shape == (3, 3) and Y.shape == (3, 2)
    np.testing.assert_allclose(X.toarray(), [[2.5, 0, 1], [0, 0.5, 0], [0, 0, 0]])
    np.testing.assert_array_equal(Y.toarray(), [[0, 1], [1, 1], [0, 0]])
    # the label order follows the list given, not the header
    _, Y2 = read_arff(arff, labels[::-1])
    np.testing.assert_array_equal(Y2.toarray(), Y.toarray()[:, ::-1])


@pytest.mark.parametrize("rows, header, fragment", [
    ("{0 1,9 1}\n", HEADER, "attribute index 9 is outside [0, 5)"),
    ("{0 x}\n", HEADER, "line 10: malformed row"),
    ("1,0,1\n", HEADER, "3 values for 5 attributes"),
    ("", HEADER.replace("@DATA", ""), "no '@data' line"),
    ("{0 1}\n", HEADER.replace("@attribute a&c {0,1}", "@attribute ac {0,1}"), "lacks, e.g. ['a&c']"),
])
def test_malformed_arff_names_the_problem_and_the_fix(tmp_path, rows, header, fragment):
    arff, labels = _files(tmp_path, rows, header)
    with pytest.raises(DataError, match="Fix:") as e:
        read_arff(arff, labels)
    assert fragment in str(e.value)


def test_label_header_without_labels(tmp_path):
    (tmp_path / "x.xml").write_text("<labels></labels>")
    with pytest.raises(DataError, match="no <label"):
        read_mulan_labels(tmp_path / "x.xml")


def test_real_bibtex_arff_equals_its_xc_conversion():
    labels = read_mulan_labels(need("bibtex", "bibtex.xml"))
    assert len(labels) == 159
    for part in ("train", "test"):
        X, Y = read_arff(need("bibtex", f"bibtex-{part}.arff.gz"), labels)
        Xc, Yc = read_xc(need("bibtex", f"xc_{part}.txt.gz"))
        assert X.shape == Xc.shape and Y.shape == Yc.shape
        assert (X != Xc).nnz == 0 and (Y != Yc).nnz == 0


def test_mulan_loader_builds_the_document_protocol():
    from recsys.data.datasets import load_bibtex, load_mulan

    root = need("bibtex", "bibtex.xml").parents[1]
    a, b = load_mulan("bibtex", root, bag_weighting="tfidf"), load_bibtex(root, bag_weighting="tfidf")
    for part in ("train", "valid", "test", "query_bags"):
        assert (getattr(a, part) != getattr(b, part)).nnz == 0
    assert a.propensity_ab == (0.55, 1.5)
