"""The vectorised identifier paths of PSI equal the item-by-item ones: normalisation (NFKC,
whitespace, upper case, de-duplication) and the KKRT identifier hash (BLAKE3 reference)."""
from __future__ import annotations

import blake3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pc_common.errors import InvalidInput
from pc_node.psi import kkrt_params
from pc_node.psi.encoding import _normalise_each, normalise_ids

TRICKY = [" 11010519491231002x ", "110105 19491231002X", "", "  ", "a\tb", "x\x1cy", "a\x0bb", "\x01",
          "ß", "ﬁ", "é", "Ａ1", "k\x00", "\x00", "abc", "ABC", "x" * 70]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=8)), max_size=12))
def test_vectorised_normalisation_equals_item_by_item(values):
    assert normalise_ids(values) == _normalise_each(values)
    ascii_only = [v for v in values if v.isascii() and "\x00" not in v]
    assert normalise_ids(ascii_only) == _normalise_each(ascii_only)


def test_normalisation_keeps_first_occurrence_order_and_refuses_non_strings():
    assert normalise_ids(["b", " a", "B", "A ", ""]) == ["B", "A"]
    assert normalise_ids(iter(["x", "x"])) == ["X"]
    with pytest.raises(InvalidInput):
        normalise_ids(["a", 3])


@pytest.mark.parametrize("ids", [["", "a", "12345", "x" * 64, "y" * 65, "Z" * 100],          # ASCII
                                 ["é", "a", "ß" * 40, "中" * 21, "中" * 22, ""],              # UTF-8
                                 []])
def test_identifier_hash_is_blake3_of_the_utf8_for_str_and_bytes(ids):
    key = bytes(range(32))
    words = np.frombuffer(key, dtype="<u4").copy()
    want = [blake3.blake3(s.encode(), key=key).digest(16) for s in ids]
    assert [r.tobytes() for r in kkrt_params.hash_items(ids, words)] == want
    assert [r.tobytes() for r in kkrt_params.hash_items([s.encode() for s in ids], words)] == want
    assert kkrt_params.hash_items(ids, words).shape == (len(ids), 16)
