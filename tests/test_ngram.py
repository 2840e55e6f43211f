import math

import numpy as np
import pytest

from nanolab.ngram import baselines, bigram, score, unigram


def test_unigram_is_add_one_smoothed_over_the_vocabulary():
    assert unigram(np.array([0, 0, 1]), 3) == pytest.approx([3 / 6, 2 / 6, 1 / 6])


def test_bigram_rows_are_counts_smoothed_towards_the_prior():
    table = bigram(np.array([0, 0, 1]), np.array([1, 1, 0]), np.array([0.5, 0.5]), beta=1.0)
    assert table[0] == pytest.approx([0.5 / 3, 2.5 / 3])
    assert table[1] == pytest.approx([0.75, 0.25])


def test_an_unseen_context_predicts_the_prior():
    prior = np.array([0.2, 0.3, 0.5])
    assert bigram(np.array([0]), np.array([1]), prior, beta=3.0)[2] == pytest.approx(prior)


def test_score_is_mean_nats_and_top1_accuracy_ties_to_the_lowest_id():
    got = score(np.array([[0.25, 0.75], [0.5, 0.5]]), np.array([1, 0]))
    assert got["ce"] == pytest.approx(-(math.log(0.75) + math.log(0.5)) / 2)
    assert got["acc"] == 1.0


def test_an_alternating_text_is_predicted_by_the_bigram_and_not_by_the_unigram():
    text = np.tile([0, 1], 50)
    got = baselines(text[:-1], text[1:], np.tile([1, 0], 10), vocab_size=3, betas=(0.3, 10.0))
    assert got["unigram"]["acc"] == pytest.approx(0.5, abs=0.03)
    assert got["unigram"]["ce"] == pytest.approx(math.log(100 / 50), abs=0.03)
    assert got["bigram"]["acc"] == 1.0
    assert got["bigram"]["beta"] == 0.3  # the weaker prior fits a deterministic text better
    assert got["bigram"]["ce"] < 0.01
