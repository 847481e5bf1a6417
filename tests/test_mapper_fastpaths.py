"""Fast paths of the mapper and the CSV reader (issue 12 speed) against what they stand in for.

Each fast string test must say exactly what the pattern it replaces says, for any text: these
compare them on arbitrary text, weighted towards the characters the patterns care about. The
CSV source's own row loop must give the rows the generic `RowSource` loop gives.
"""

from __future__ import annotations

from array import array
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from batch.mapper import (
    _ID_FORBIDDEN,
    _ID_INVISIBLE,
    _ID_PATH_STEPS,
    _TEXT_SUSPECT,
    _UPN_PLAIN,
    InputOptions,
    _find_duplicates,
    _plain_upn,
    _RowMapper,
    _suspect,
)
from batch.reader import RowSource, open_input

_SPECIAL = st.sampled_from(
    list("@=+-'Ee0123456789 ./\\?#%\t\n\r\x00\x1f\x7f\x85\x9f\xa0\u200b\u2028\u202e\ufeff٣")
)
_TEXT = st.lists(st.one_of(_SPECIAL, st.characters()), min_size=1, max_size=14).map("".join)


@settings(max_examples=600)
@given(_TEXT)
@example("9.36382E+11")
@example("1e-5x")
@example("=SUM(A1)")
@example("tab\there")
@example("CONTOSO-0000000")
def test_suspect_says_what_the_pattern_says(value: str) -> None:
    assert _suspect(value) is (_TEXT_SUSPECT.search(value) is not None)


@settings(max_examples=600)
@given(_TEXT)
@example("adele.wilber@contoso.com")
@example("@contoso.com")
@example("adele@")
@example("a@b@c")
@example("'a@b")
@example("a b@c")
@example("a\u200b@b")
@example("a\xa0@b")
def test_plain_upn_says_what_the_pattern_says(value: str) -> None:
    assert _plain_upn(value) is (_UPN_PLAIN.fullmatch(value) is not None)


def _reference_key_ok(text: str) -> bool:
    """The id rule as the regex search alone decides it."""
    if not text or text.casefold() == "<null>" or text in _ID_PATH_STEPS:
        return False
    if _ID_FORBIDDEN.search(text):
        return False
    import unicodedata

    return text.isascii() or not any(unicodedata.category(c) in _ID_INVISIBLE for c in text)


@settings(max_examples=600)
@given(_TEXT | st.sampled_from(["", ".", "..", "<null>", "<NULL>", "<Null>"]))
@example("529f8fbe-0564-4a76-ade9-661f593c5c21")
@example("a/b")
@example("a%2Fb")
@example("a b")
def test_id_fast_path_says_what_the_search_says(text: str) -> None:
    mapper = _RowMapper("id", [], InputOptions(), None)
    assert (mapper.key_problem(text) is None) is _reference_key_ok(text)


def test_csv_rows_match_the_generic_source_path(tmp_path: Path) -> None:
    # Column C has no header; rows 3 (empty) and 4 (spaces) are blank; row 5 has only a cell
    # after the id; row 6 a short row.
    path = tmp_path / "rows.csv"
    path.write_text(
        "id,deviceSerialNumber,,groupTag\ne1,0042,x,tag\n,,,\n  , ,\t,\n,,,late\ne2\n",
        encoding="utf-8",
    )
    source = open_input(path)
    fast = list(source)
    assert fast == list(RowSource.__iter__(source))
    assert [r.number for r in fast] == [2, 5, 6]
    assert fast[0].cells == {"id": "e1", "deviceSerialNumber": "0042", "groupTag": "tag"}
    assert source.hidden_rows.count == 0


@pytest.mark.parametrize("numpy_loaded", [False, True])
def test_duplicates_quick_check_and_numpy_agree(
    monkeypatch: pytest.MonkeyPatch, numpy_loaded: bool
) -> None:
    """Distinct prefixes: nothing; the same prefix with another tail: numpy says nothing too."""
    import types

    import batch.mapper

    # The quick check runs only while numpy is not loaded: pretend either way.
    loaded = {"numpy": object()} if numpy_loaded else {}
    monkeypatch.setattr(batch.mapper, "sys", types.SimpleNamespace(modules=loaded))
    unique = bytearray(b"".join(n.to_bytes(16, "little") for n in range(1000)))
    assert len(_find_duplicates(unique, array("q", range(2, 1002)))) == 0
    same_prefix = bytearray(b"A" * 8 + b"B" * 8 + b"A" * 8 + b"C" * 8 + b"D" * 16)
    assert len(_find_duplicates(same_prefix, array("q", [2, 3, 4]))) == 0
    twice = bytearray(b"A" * 16 + b"E" * 16 + b"A" * 16)
    found = _find_duplicates(twice, array("q", [2, 3, 4]))
    assert dict(found) == {2: (4,), 4: (2,)}
