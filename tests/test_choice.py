"""The feature-set choice: scored on held-out images (never the test split); the preferred set kept
unless another is ahead by more than one standard error, else the best; ties broken toward
confidence and then toward the earlier (simpler) set."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retrain.choice import Candidate, ChoiceMemo, choose_features, pick
from retrain.heads import fit_prototypes


def _fit(features: np.ndarray, labels: np.ndarray):
    return fit_prototypes(features, labels, 3)


CENTRES = np.random.default_rng(42).normal(0, 1, (3, 5)) * 5  # of the three classes, in columns 0-4


def _data(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns 0-4 separate three classes; columns 5-9 are noise."""
    labels = np.arange(count) % 3
    signal = CENTRES[labels] + rng.normal(0, 0.3, (count, 5))
    return np.hstack([signal, rng.normal(0, 1, (count, 5))]), labels


def test_the_informative_columns_win_on_the_validation_split() -> None:
    rng = np.random.default_rng(0)
    columns = {"noise": np.arange(5, 10), "signal": np.arange(0, 5), "both": np.arange(10)}
    choice = choose_features(columns, _data(rng, 60), _data(rng, 30), _fit)
    assert choice.method == "validation split (30 images)"
    scores = {c.name: c.accuracy for c in choice.candidates}
    assert scores["signal"] == 1.0 and scores["noise"] < 0.7
    assert choice.chosen in ("signal", "both") and scores[choice.chosen] == max(scores.values())
    assert [c.dims for c in choice.candidates] == [5, 5, 10]


def test_without_a_validation_split_it_cross_validates_the_training_images() -> None:
    rng = np.random.default_rng(1)
    x, y = _data(rng, 12)
    choice = choose_features({"noise": np.arange(5, 10), "signal": np.arange(5)}, (x, y), (x[:0], y[:0]), _fit)
    assert choice.method == "cross-validation over the 12 training images"
    assert choice.chosen == "signal" and all(c.cross_entropy is None for c in choice.candidates)


def test_equal_scores_go_to_the_earlier_set() -> None:
    rng = np.random.default_rng(2)
    same = np.arange(0, 5)
    choice = choose_features({"first": same, "second": same}, _data(rng, 30), _data(rng, 15), _fit)
    assert choice.candidates[0].accuracy == choice.candidates[1].accuracy and choice.chosen == "first"


def test_a_choice_is_remembered_for_the_same_inputs_only(tmp_path: Path) -> None:
    """A rerun on the same vectors reads the scores back; any change to what they depend on scores afresh."""
    rng = np.random.default_rng(3)
    columns = {"noise": np.arange(5, 10), "signal": np.arange(5)}
    train, validation = _data(rng, 30), _data(rng, 15)
    memo = ChoiceMemo(tmp_path / "choices")
    key = memo.key(columns, train, validation, fitted_by="prototype", seed=0)
    assert memo.recall(key) is None
    choice = choose_features(columns, train, validation, _fit)
    memo.remember(key, choice)
    again = memo.recall(key)
    assert again is not None and again.remembered and not choice.remembered
    assert again.to_json() == choice.to_json()

    relabelled = (train[0], np.roll(train[1], 1))
    changed = [
        memo.key(columns, relabelled, validation, fitted_by="prototype", seed=0),
        memo.key(columns, train, validation, fitted_by="softmax", seed=0),
        memo.key(columns, train, validation, fitted_by="prototype", seed=1),
        memo.key({"signal": np.arange(5)}, train, validation, fitted_by="prototype", seed=0),
        memo.key(columns, train, (validation[0] + 1e-6, validation[1]), fitted_by="prototype", seed=0),
        memo.key(columns, train, validation, fitted_by="prototype", seed=0, preferred=["noise"]),
    ]
    assert len({key, *changed}) == 7


def test_an_unreadable_remembered_choice_is_scored_again(tmp_path: Path) -> None:
    memo = ChoiceMemo(tmp_path)
    (tmp_path / "abc.json").write_text('{"method": "truncat')
    assert memo.recall("abc") is None
    memo_in_a_file = ChoiceMemo(tmp_path / "abc.json")  # a directory that cannot be made: not an error
    memo_in_a_file.remember(
        "k",
        choose_features(
            {"all": np.arange(10)}, _data(np.random.default_rng(4), 9), _data(np.random.default_rng(5), 6), _fit
        ),
    )
    assert memo_in_a_file.recall("k") is None


def _scored(**right: list[int]) -> tuple[list[Candidate], dict[str, np.ndarray]]:
    """Candidates scored on the same held-out images: `right[name]` says which ones each gets right."""
    arrays = {name: np.array(hits, bool) for name, hits in right.items()}
    return [Candidate(name, 1, float(hits.mean()), 0.5) for name, hits in arrays.items()], arrays


def test_the_preferred_set_is_kept_when_another_leads_within_one_standard_error() -> None:
    """`both` leads `preferred` by 2 of 20 images, with 4 images that exactly one of them gets right:
    a standard error of 2, so the lead is within it."""
    candidates, right = _scored(
        preferred=[1] * 16 + [0, 0, 0, 1],
        both=[1] * 16 + [1, 1, 1, 0],
    )
    chosen, reason = pick(candidates, right, preferred=["preferred"])
    assert chosen == "preferred"
    assert reason == "preferred: both is ahead by 2 images, within one standard error (2.0)"


def test_a_clear_lead_beats_the_preferred_set() -> None:
    """A lead of 3 images, all 3 where only the leader is right: more than the standard error (1.7)."""
    candidates, right = _scored(preferred=[1] * 15 + [0, 0, 0], other=[1] * 18)
    chosen, reason = pick(candidates, right, preferred=["preferred"])
    assert chosen == "other"
    assert reason == "ahead of the preferred preferred by 3 images, more than one standard error (1.7)"


def test_the_most_accurate_of_several_preferred_sets_is_the_one_kept() -> None:
    candidates, right = _scored(a=[1, 0, 0, 0], b=[1, 1, 0, 0], c=[1, 1, 1, 0])
    assert pick(candidates, right, preferred=["a", "b"])[0] == "b"
    assert pick(candidates, right, preferred=[]) == ("c", "the most accurate")
    assert pick(candidates, right, preferred=["c"]) == ("c", "the most accurate and preferred")
