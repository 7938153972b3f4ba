"""The Frechet distance against its closed form for diagonal Gaussians."""

import numpy as np
import pytest

from train.fid import frechet_distance, gaussian_fit


def test_frechet_distance_of_diagonal_gaussians():
    # For diagonal covariances the trace term is sum_j (sqrt(a_j) - sqrt(b_j))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)


def test_frechet_distance_is_zero_for_the_same_sample():
    x = np.random.default_rng(0).normal(size=(500, 4))
    assert frechet_distance(*gaussian_fit(x), *gaussian_fit(x)) == pytest.approx(0, abs=1e-6)
