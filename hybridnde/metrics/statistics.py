"""Attractor statistics: Kullback-Leibler divergence between histograms of predicted and true states.

Janvier, Salomon & Meunier ("Jacobian Regularization Stabilizes Long-Term Integration of
Neural Differential Equations") compare 50-bin histograms of the states a model
visits with those of the truth; unlike pointwise errors this still means something after the
trajectories have decorrelated. Here

    D_KL(P* || P) = sum_b p*_b log(p*_b / p_b)   (natural log, nats)

with ``p*`` the truth's and ``p`` the prediction's bin probabilities on ``bins`` equal bins over
the truth's finite range, plus one underflow and one overflow bin for predicted values outside it
(bins over the joint range would let one far-off prediction stretch every bin until the truth fits
in one), and ``epsilon`` added to every bin (then renormalised) so that a bin the model never
visits gives a large but finite divergence.
"""
from __future__ import annotations

import numpy as np

from .errors import finite_states

__all__ = ["histogram_kl_divergence", "common_finite_samples", "KL_BINS", "KL_EPSILON", "MIN_FINITE_SHARE"]

#: attractor statistics (spectrum, histograms) need the model's states: below this share of finite
#: ones they are undefined. A model that blew up just after the start had its few first states -- still
#: the truth's -- compared with the truth's whole horizon, and scored better than a stable closure.
MIN_FINITE_SHARE = 0.5


#: histogram bins over the truth's range, and the probability added to every bin: where the truth
#: has mass p in bins the model never visits, the divergence is about p ln(p / KL_EPSILON), so it is
#: recorded beside the value (metrics.json ``kl_divergence``)
KL_BINS, KL_EPSILON = 50, 1e-10


def histogram_kl_divergence(predicted: np.ndarray, truth: np.ndarray, *, bins: int = KL_BINS,
                            epsilon: float = KL_EPSILON) -> float:
    """``D_KL(truth || predicted)`` between histograms of two samples of scalars.

    Args:
        predicted, truth: samples of any shape (flattened); non-finite values are dropped.
        bins: number of equal-width bins over the truth's finite range (plus under/overflow).
        epsilon: probability added to every bin before renormalising.
    Returns:
        The divergence in nats (0 for identical samples); NaN when either sample has no finite value.
    """
    predicted = np.asarray(predicted, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=np.float64).ravel()
    predicted, truth = predicted[np.isfinite(predicted)], truth[np.isfinite(truth)]
    if not predicted.size or not truth.size:
        return float("nan")
    low, high = truth.min(), truth.max()
    if high == low:
        low, high = low - 0.5, high + 0.5  # a constant truth: one occupied bin around it
    edges = np.linspace(low, high, bins + 1)

    def probabilities(sample: np.ndarray) -> np.ndarray:
        counts = np.histogram(sample, bins=edges)[0]  # the last bin includes ``high``
        outside = [np.count_nonzero(sample < low), np.count_nonzero(sample > high)]
        return np.concatenate([counts, outside]) / sample.size + epsilon

    p_truth, p_model = probabilities(truth), probabilities(predicted)
    p_truth /= p_truth.sum()
    p_model /= p_model.sum()
    return float(np.sum(p_truth * np.log(p_truth / p_model)))


def common_finite_samples(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(predicted, truth, share)``: both left out (NaN) at every (member, time) sample where either
    state is not wholly finite, so both statistics cover the same samples; ``share``: the share of the
    samples with a defined truth at which the prediction is finite too."""
    defined = finite_states(truth)
    both = finite_states(predicted) & defined
    share = float(both.sum() / defined.sum()) if defined.any() else 0.0
    if not both.all():
        mask = both.reshape(*both.shape, *([1] * (truth.ndim - 2)))
        predicted, truth = np.where(mask, predicted, np.nan), np.where(mask, truth, np.nan)
    return predicted, truth, share
