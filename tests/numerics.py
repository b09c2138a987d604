"""The two error metrics the tests compare with."""

import torch


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| over the finite entries of ``expected``, in float64;
    non-finite entries must match exactly."""
    actual, expected = actual.detach().double(), expected.detach().double()
    finite = torch.isfinite(expected)
    assert torch.equal(actual[~finite], expected[~finite]), "non-finite entries differ"
    return ((actual[finite] - expected[finite]).abs().max() / expected[finite].abs().max()).item()


def norm_relative_error(actual, expected) -> float:
    """||actual - expected||_2 / ||expected||_2, in float64."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return ((actual - expected).norm() / expected.norm()).item()
