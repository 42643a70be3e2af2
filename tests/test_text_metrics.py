"""The in-house generated-text metrics (`hf_distill.text_metrics`) against values computed by hand."""

import math

import pytest

from hf_distill.text_metrics import corpus_bleu, exact_match, last_backend, rouge_l_f, text_scores, words


def test_words_are_lowercased_letters_and_digits():
    assert words("Hello, World! It's 3rd-rate.") == ["hello", "world", "it", "s", "3rd", "rate"]


def test_rouge_l_f_by_hand():
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat": 5 words of 6 and 6
    assert rouge_l_f(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(2 * 5 / 12)
    # LCS("a b c d", "d c b a") = 1: P = 1/4, R = 1/4; and a second example with nothing in common
    assert rouge_l_f(["a b c d", "x y"], ["d c b a", "z"]) == pytest.approx((0.25 + 0.0) / 2)
    assert rouge_l_f([""], [""]) == 1.0 and rouge_l_f(["a"], [""]) == 0.0


def test_corpus_bleu_by_hand():
    # one pair: clipped n-gram precisions 6/7, 5/6, 4/5, 3/4; the prediction is longer, so no brevity penalty
    longer = corpus_bleu(["the cat sat on the mat today"], ["the cat sat on the mat"])
    assert longer == pytest.approx((6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25)
    # a short prediction: every precision is 1, the brevity penalty exp(1 - 6/4) is all that is left
    assert corpus_bleu(["the cat sat on"], ["the cat sat on the mat"]) == pytest.approx(math.exp(-0.5))
    # corpus-level: counts are summed before dividing (10/11, 8/9, 6/7, 4/5), lengths c = 11, r = 12
    both = corpus_bleu(["the cat sat on the mat today", "the cat sat on"],
                       ["the cat sat on the mat", "the cat sat on the mat"])  # fmt: skip
    assert both == pytest.approx(math.exp(1 - 12 / 11) * (10 / 11 * 8 / 9 * 6 / 7 * 4 / 5) ** 0.25)
    # no 4-gram in common: 0 (no smoothing); clipping: "the the the" matches "the" once per reference count
    assert corpus_bleu(["the cat sat on the mat"], ["the cat is on the mat"]) == 0.0
    assert corpus_bleu(["the the the the"], ["the cat"], max_order=1) == pytest.approx(1 / 4)


def test_exact_match_compares_words():
    assert exact_match(["Positive", "negative ", "positive!"], ["positive", "positive", "positive"]) == 2 / 3


def test_text_scores_fall_back_and_say_so():
    scores = text_scores(["the cat sat on"], ["the cat sat on the mat"], use_evaluate=False)
    assert scores == pytest.approx({"rougeL": 2 * 4 / 10, "bleu": math.exp(-0.5), "exact_match": 0.0})
    assert last_backend() == "rougeL: hf_distill, bleu: hf_distill"
    with pytest.raises(ValueError, match="need as many predictions as references"):
        text_scores(["a"], [], use_evaluate=False)
