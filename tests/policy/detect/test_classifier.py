"""What the classifier scores (windows of a value's strings) and what its scores mean."""

from __future__ import annotations

from policy.detect.classifier import (
    CLASSIFIER_KIND,
    ClassifierSettings,
    Window,
    classifier_findings,
    classifier_windows,
    unavailable_finding,
)

SETTINGS = ClassifierSettings(threshold=0.9, min_chars=10, window_chars=100, overlap_chars=20, max_windows=8)


def test_short_strings_are_not_scored_and_paths_follow_the_scan() -> None:
    value = {"content": [{"type": "text", "text": "a long enough text to score"}], "isError": False}
    windows = classifier_windows(value, "", SETTINGS)
    assert windows == [Window("content[0].text", "a long enough text to score")]


def test_long_strings_are_cut_into_overlapping_windows_so_the_end_is_seen() -> None:
    text = "x" * 250 + " PAYLOAD"
    windows = classifier_windows({"body": text}, "arguments", SETTINGS)
    assert [w.path for w in windows] == ["arguments.body"] * 3
    assert all(len(w.text) <= 100 for w in windows)
    assert "PAYLOAD" in windows[-1].text
    # consecutive windows share overlap_chars, so a phrase across a cut is whole in one of them
    assert windows[0].text[-20:] == windows[1].text[:20]


def test_at_most_max_windows_in_document_order() -> None:
    windows = classifier_windows({"a": "y" * 5000, "b": "z" * 50}, "", SETTINGS)
    assert len(windows) == 8 and {w.path for w in windows} == {"a"}


def test_a_path_is_flagged_once_at_its_best_score_at_or_over_the_threshold() -> None:
    windows = [Window("a", "1"), Window("a", "2"), Window("b", "3"), Window("c", "4")]
    found = classifier_findings(windows, [0.2, 0.95, 0.89, 0.9], SETTINGS)
    assert [(f.code, f.kind, f.path, f.severity) for f in found] == [
        ("prompt_injection", CLASSIFIER_KIND, "a", "high"),
        ("prompt_injection", CLASSIFIER_KIND, "c", "high"),
    ]
    assert found[0].excerpt == "classifier score 0.95 (threshold 0.90)"


def test_an_unavailable_classifier_finding_says_why() -> None:
    finding = unavailable_finding("arguments", "no score within 50 ms")
    assert finding.kind == "classifier_unavailable" and "50 ms" in finding.excerpt and finding.severity == "high"
