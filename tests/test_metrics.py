import pytest

from nlora import metrics


def test_normalisation_and_exact_match():
    assert metrics.normalize_answer("  Science  or\nTechnology. ") == "science or technology"
    assert metrics.exact_match(" world!", "World") == 1.0
    assert metrics.exact_match("world news", "World") == 0.0


def test_score_is_percent():
    s = metrics.score(["World", "Sports", "x"], ["World", "Business", "x"])
    assert s["exact_match"] == pytest.approx(200 / 3, abs=1e-3)
    assert 0 < s["rougeL"] < 100


def test_rouge_partial_overlap():
    assert metrics.rouge_l("science", "Science or Technology") == pytest.approx(0.5)


def test_aa_bwt_fwt():
    m = [[80.0, None, None], [70.0, 60.0, None], [50.0, 55.0, 90.0]]
    assert metrics.average_accuracy(m) == pytest.approx((50 + 55 + 90) / 3)
    assert metrics.backward_transfer(m) == pytest.approx(((50 - 80) + (55 - 60)) / 2)
    assert metrics.backward_transfer([[10.0]]) is None
    full = [[80.0, 10.0, 20.0], [70.0, 60.0, 30.0], [50.0, 55.0, 90.0]]
    assert metrics.forward_transfer(full, [5.0, 5.0, 10.0]) == pytest.approx(((10 - 5) + (30 - 10)) / 2)
    assert metrics.forward_transfer(m, [5.0, 5.0, 10.0]) is None
