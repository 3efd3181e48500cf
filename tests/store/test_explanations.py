"""Feature explanations in the store, against a REAL MongoDB-wire-protocol server (the session
server of the analysis tests, started on a temp dir; skipped locally when none is installed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from saes.store import (
    EXPLANATIONS,
    FEATURES,
    active_analysis_id,
    delete_dictionary,
    delete_explanations,
    explanation_id,
    get_explanation,
    get_explanation_text,
    list_explanations,
    publish_analysis,
    put_explanation,
)

DICT, OTHER = "expl-dict", "expl-other"


def _features(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{"index": i, "seed": seed, "density": float(rng.random()), "max_activation": float(rng.random()),
             "mean_activation": float(rng.random())} for i in range(n)]  # fmt: skip


def test_round_trip_keeps_the_servers_document_shape(db: Any) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    written = put_explanation(db, DICT, 7, "fires on Python keywords")
    stored = db[EXPLANATIONS].find_one({"_id": f"{DICT}:7"})  # the id the server has always used
    assert stored is not None and written["_id"] == explanation_id(DICT, 7) == f"{DICT}:7"
    assert (stored["dictionary_id"], stored["index"], stored["text"]) == (DICT, 7, "fires on Python keywords")
    assert (stored["source"], stored["explainer"], stored["scores"]) == ("human", None, None)
    assert before <= stored["updated_at"] <= datetime.now(UTC) + timedelta(seconds=5)
    got = get_explanation(db, DICT, 7)
    assert got is not None and {k: got[k] for k in written} == {k: stored[k] for k in written}
    assert get_explanation_text(db, DICT, 7) == "fires on Python keywords"
    assert get_explanation(db, DICT, np.int64(7))["text"] == "fires on Python keywords"  # numpy index


def test_second_put_replaces_the_first(db: Any) -> None:
    put_explanation(db, DICT, 3, "first", scores={"detection": 0.5})
    first = get_explanation(db, DICT, 3)
    put_explanation(db, DICT, 3, "second", source="auto", explainer="explainer-model-v1", scores={"fuzzing": 0.75})
    got = get_explanation(db, DICT, 3)
    assert got["text"] == "second" and got["source"] == "auto" and got["explainer"] == "explainer-model-v1"
    assert got["scores"] == {"fuzzing": 0.75}  # replaced, not merged with the first scores
    assert got["updated_at"] >= first["updated_at"]
    assert db[EXPLANATIONS].count_documents({}) == 1
    put_explanation(db, DICT, 3, "by a person again")
    got = get_explanation(db, DICT, 3)
    assert (got["text"], got["source"], got["explainer"], got["scores"]) == ("by a person again", "human", None, None)


def test_missing_explanations_are_none(db: Any) -> None:
    assert get_explanation(db, DICT, 0) is None and get_explanation_text(db, DICT, 0) is None
    put_explanation(db, DICT, 0, "zero")
    assert get_explanation(db, DICT, 1) is None
    assert get_explanation(db, OTHER, 0) is None  # same index, other dictionary
    assert get_explanation(db, f"{DICT}:0", 0) is None
    assert list_explanations(db, OTHER) == []


def test_documents_written_before_source_existed_read_as_human(db: Any) -> None:
    legacy = {"_id": f"{DICT}:5", "dictionary_id": DICT, "index": 5, "text": "old", "updated_at": datetime.now(UTC)}
    db[EXPLANATIONS].insert_one(legacy)  # what server/routers/features.py wrote before the store owned it
    got = get_explanation(db, DICT, 5)
    assert got["text"] == "old" and got["source"] == "human" and got["explainer"] is None and got["scores"] is None
    assert [d["index"] for d in list_explanations(db, DICT)] == [5]


def test_list_sorted_by_index_and_filtered(db: Any) -> None:
    for index in (12, 2, 40, 7):
        put_explanation(db, DICT, index, f"feature {index}")
    put_explanation(db, OTHER, 2, "other dictionary")
    assert [d["index"] for d in list_explanations(db, DICT)] == [2, 7, 12, 40]
    assert [d["text"] for d in list_explanations(db, DICT)] == ["feature 2", "feature 7", "feature 12", "feature 40"]
    picked = list_explanations(db, DICT, [40, 3, np.int32(2), 40])  # missing skipped, duplicates once
    assert [d["index"] for d in picked] == [2, 40]
    assert list_explanations(db, DICT, []) == []
    assert [d["text"] for d in list_explanations(db, OTHER)] == ["other dictionary"]


def test_delete_explanations(db: Any) -> None:
    for index in range(5):
        put_explanation(db, DICT, index, "x")
    put_explanation(db, OTHER, 1, "y")
    assert delete_explanations(db, DICT, [1, 3, 99]) == 2
    assert [d["index"] for d in list_explanations(db, DICT)] == [0, 2, 4]
    assert delete_explanations(db, DICT, []) == 0
    assert delete_explanations(db, DICT) == 3
    assert list_explanations(db, DICT) == [] and get_explanation_text(db, OTHER, 1) == "y"


def test_republished_analysis_keeps_explanations(db: Any) -> None:
    old = publish_analysis(db, DICT, _features(20, seed=1))
    put_explanation(db, DICT, 4, "kept across re-analysis")
    new = publish_analysis(db, DICT, _features(20, seed=2))
    assert active_analysis_id(db, DICT) == new != old
    assert db[FEATURES].count_documents({"analysis_id": old}) == 0  # the old analysis is gone...
    assert get_explanation_text(db, DICT, 4) == "kept across re-analysis"  # ...its explanations are not


def test_deleting_a_dictionary_deletes_its_explanations_only(db: Any) -> None:
    publish_analysis(db, DICT, _features(10, seed=1))
    publish_analysis(db, OTHER, _features(10, seed=1))
    for index in (1, 2):
        put_explanation(db, DICT, index, "gone with the dictionary")
    put_explanation(db, OTHER, 1, "stays")
    assert delete_dictionary(db, DICT) == 10  # still returns the feature documents deleted
    assert list_explanations(db, DICT) == [] and db[EXPLANATIONS].count_documents({"dictionary_id": DICT}) == 0
    assert get_explanation_text(db, OTHER, 1) == "stays"
    put_explanation(db, OTHER, 2, "kept on request")
    delete_dictionary(db, OTHER, keep_explanations=True)
    assert [d["index"] for d in list_explanations(db, OTHER)] == [1, 2]


def test_index_is_created(db: Any) -> None:
    names = {ix["name"] for ix in db[EXPLANATIONS].list_indexes()}
    assert "by_dictionary_index" in names


@pytest.mark.parametrize("index", [-1, True, 1.0, "3"])
def test_bad_index_is_rejected(db: Any, index: Any) -> None:
    with pytest.raises(ValueError, match="non-negative int"):
        put_explanation(db, DICT, index, "x")
    assert db[EXPLANATIONS].count_documents({}) == 0


def test_bad_fields_are_rejected(db: Any) -> None:
    with pytest.raises(TypeError):
        put_explanation(db, DICT, 0, None)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        put_explanation(db, "", 0, "x")
    with pytest.raises(ValueError):
        put_explanation(db, DICT, 0, "x", source="")
    with pytest.raises(ValueError, match="not finite"):
        put_explanation(db, DICT, 0, "x", scores={"detection": float("nan")})
    with pytest.raises(TypeError):
        put_explanation(db, DICT, 0, "x", scores={"detection": "high"})  # type: ignore[dict-item]
    assert db[EXPLANATIONS].count_documents({}) == 0
