"""Moving Digits metrics: Frechet distance against an independent oracle, diversity and accuracy on known
inputs, and the committed classifier on real held-out videos."""

import pytest
import scipy.linalg
import torch

from megatron_rcm.data.moving_digits import make_videos, prompt_grid
from megatron_rcm.evaluation.digits import (classify, diversity, frechet_distance, load_classifier,
                                            prompt_accuracy, video_metrics)


def _oracle_fd(a, b):
    a, b = a.double().numpy(), b.double().numpy()
    ca, cb = torch.cov(torch.from_numpy(a.T)).numpy(), torch.cov(torch.from_numpy(b.T)).numpy()
    cross = scipy.linalg.sqrtm(ca @ cb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + (ca + cb - 2 * cross).trace())


def test_frechet_distance_matches_scipy_sqrtm():
    gen = torch.Generator().manual_seed(int(torch.randint(1 << 30, ())))
    a = torch.randn(300, 6, generator=gen) @ torch.randn(6, 6, generator=gen)
    b = torch.randn(250, 6, generator=gen) * 2 + 1
    assert frechet_distance(a, b) == pytest.approx(_oracle_fd(a, b), rel=1e-8)


def test_frechet_distance_is_zero_for_a_set_and_the_squared_shift_for_a_translated_set():
    a = torch.randn(500, 8, dtype=torch.float64)
    shift = torch.randn(8, dtype=torch.float64)
    assert abs(frechet_distance(a, a)) < 1e-9
    assert frechet_distance(a, a + shift) == pytest.approx(shift.square().sum().item(), rel=1e-7)


def test_frechet_distance_with_fewer_videos_than_feature_dims_is_the_squared_shift():
    """20 videos give 64-dim covariances of rank 19, whose eigenvalues come out slightly negative in
    float64: the square roots must treat them as zero, not turn the distance into NaN."""
    gen = torch.Generator().manual_seed(int(torch.randint(1 << 30, ())))
    a = torch.randn(20, 64, generator=gen, dtype=torch.float64)
    shift = torch.randn(64, generator=gen, dtype=torch.float64)
    # rel: the zero eigenvalues' rounding noise (~1e-16) enters through square roots; 7e-8 at worst on 300 seeds
    assert frechet_distance(a, a + shift) == pytest.approx(shift.square().sum().item(), rel=1e-6)


def test_diversity_is_the_mean_pairwise_distance_within_each_group():
    features = torch.tensor([[0.0], [1.0], [3.0], [5.0], [5.0]])
    groups = torch.tensor([0, 0, 0, 1, 1])
    # group 0: distances 1, 3, 2 -> 2; group 1: identical -> 0
    assert diversity(features, groups) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        diversity(features, torch.tensor([0, 0, 0, 0, 1]))


def test_prompt_accuracy_counts_digit_direction_and_both():
    acc = prompt_accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([0, 0, 5, 5]),
                          torch.tensor([1, 2, 0, 0]), torch.tensor([0, 1, 5, 1]))
    assert acc == {"digit_acc": 0.5, "direction_acc": 0.5, "joint_acc": 0.25}


@pytest.fixture(scope="module")
def classifier():
    return load_classifier()


def test_classifier_features_and_predictions_against_a_float64_reference(classifier):
    """The space FD and diversity are measured in: the committed weights through four 3x3x3 convolutions
    with GELU and a mean over time and space, recomputed in float64 with torch.nn.functional."""
    import torch.nn.functional as nn_functional
    from safetensors.torch import load_file

    from megatron_rcm.evaluation.digits import DEFAULT_WEIGHTS

    weights = {k: v.double() for k, v in load_file(str(DEFAULT_WEIGHTS)).items()}
    videos = make_videos("test", 8, seed=int(torch.randint(1 << 30, ()))).videos
    x = videos.double()
    for i, stride in enumerate([1, (1, 2, 2), 2, 1]):
        x = nn_functional.gelu(nn_functional.conv3d(x, weights[f"convs.{i}.weight"], weights[f"convs.{i}.bias"],
                                                    stride=stride, padding=1))
    expected = x.mean(dim=(2, 3, 4))
    features, digit_pred, direction_pred = classify(classifier, videos)
    torch.testing.assert_close(features.double(), expected, rtol=0, atol=1e-5)  # float32 convolutions
    for pred, head in ((digit_pred, "digit_head"), (direction_pred, "direction_head")):
        logits = expected @ weights[f"{head}.weight"].T + weights[f"{head}.bias"]
        top2 = logits.topk(2).values
        clear = top2[:, 0] - top2[:, 1] > 1e-3  # float32 may pick either of two tied logits
        assert clear.sum() >= 6 and torch.equal(pred[clear], logits.argmax(1)[clear])


def test_committed_classifier_on_real_held_out_videos(classifier):
    real = make_videos("test", 200, seed=int(torch.randint(1 << 30, ())))
    _, digit_pred, direction_pred = classify(classifier, real.videos)
    acc = prompt_accuracy(digit_pred, direction_pred, real.digits, real.directions)
    assert acc["digit_acc"] > 0.9 and acc["direction_acc"] > 0.95


def test_metrics_separate_real_from_corrupted_videos(classifier):
    seed = int(torch.randint(1 << 30, ()))
    reference = classify(classifier, make_videos("test", 400, seed=seed).videos)[0]
    digits, directions = prompt_grid(3)
    real = make_videos("test", len(digits), seed=seed + 1, digits=digits, directions=directions)
    good = video_metrics(classifier, real.videos, digits, directions, reference)
    noise = video_metrics(classifier, torch.randn_like(real.videos), digits, directions, reference)
    shuffled = video_metrics(classifier, real.videos[torch.randperm(len(digits))], digits, directions, reference)
    assert good["joint_acc"] > 0.85 and noise["joint_acc"] < 0.2 and shuffled["joint_acc"] < 0.2
    assert noise["fd"] > 10 * good["fd"]
    assert shuffled["fd"] == pytest.approx(good["fd"], rel=1e-6)  # same videos, same features: FD ignores prompts
