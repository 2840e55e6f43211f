"""Count-based baselines for next-token prediction: the unigram and bigram models of a training
set, scored on val with the same axes as a trained model (cross-entropy in nats per token and
accuracy). A study of small models reports them beside its runs: a model that does not beat the
bigram table of its own training tokens has learnt less than counting does.

    from nanolab.ngram import baselines
    baselines(inputs, targets, val, vocab_size)
    # {"unigram": {"ce": ..., "acc": ...}, "bigram": {"ce": ..., "acc": ..., "beta": ...}}

The bigram model is smoothed towards the unigram one (a Dirichlet prior of strength beta:
p(b | a) = (count(a, b) + beta p(b)) / (count(a) + beta)), so an unseen context predicts the
unigram distribution; the unigram model is add-one smoothed over the vocabulary.
"""

from __future__ import annotations

import numpy as np

BETAS = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def unigram(targets: np.ndarray, vocab_size: int) -> np.ndarray:
    """The add-one smoothed frequency of each token among the targets."""
    counts = np.bincount(targets, minlength=vocab_size).astype(np.float64)
    return (counts + 1) / (counts.sum() + vocab_size)


def bigram(inputs: np.ndarray, targets: np.ndarray, prior: np.ndarray, beta: float) -> np.ndarray:
    """The table p(target | input) of the (input, target) pairs, smoothed towards `prior` with
    strength `beta`: row a is the distribution after token a."""
    vocab_size = len(prior)
    counts = np.zeros((vocab_size, vocab_size))
    np.add.at(counts, (inputs, targets), 1.0)
    return (counts + beta * prior) / (counts.sum(axis=1, keepdims=True) + beta)


def score(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Cross-entropy (nats per token) and accuracy of per-position distributions `probs`
    (positions x vocabulary) on `targets`; a tie for the top counts as the lowest token id."""
    picked = probs[np.arange(len(targets)), targets]
    return {
        "ce": float(-np.log(picked).mean()),
        "acc": float((probs.argmax(axis=1) == targets).mean()),
    }


def baselines(
    inputs: np.ndarray,
    targets: np.ndarray,
    val: np.ndarray,
    vocab_size: int,
    betas: tuple[float, ...] = BETAS,
) -> dict[str, dict[str, float]]:
    """The unigram and bigram models of the training pairs (inputs[i] -> targets[i]) scored on
    each next token of `val`. The bigram's beta is the one of `betas` with the lowest val
    cross-entropy (chosen on val: a generous baseline), reported as "beta"."""
    prior = unigram(targets, vocab_size)
    context, nxt = val[:-1].astype(np.int64), val[1:].astype(np.int64)
    out = {"unigram": score(np.broadcast_to(prior, (len(nxt), vocab_size)), nxt)}
    tried = [(score(bigram(inputs, targets, prior, b)[context], nxt), b) for b in betas]
    best, beta = min(tried, key=lambda t: t[0]["ce"])
    out["bigram"] = best | {"beta": beta}
    return out
