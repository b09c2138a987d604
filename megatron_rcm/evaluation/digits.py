"""Moving Digits metrics from a small digit/direction classifier: prompt accuracy, Frechet distance, diversity.

The classifier is a 3-D CNN trained on real train-split videos (``tools/train_digits_classifier.py``;
weights in ``assets/moving_digits/classifier.safetensors``). Its pooled features (``FEATURE_DIM``)
are the space for the Frechet distance (as FID uses Inception's) and for diversity.
"""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nn_functional

from megatron_rcm.data.moving_digits import DIRECTIONS, NUM_DIGITS, MovingDigitsSpec, make_videos, prompt_for
from megatron_rcm.data.toy_text_encoder import ToyTextEncoder
from megatron_rcm.diffusion.denoiser import TrigFlowDenoiser
from megatron_rcm.diffusion.few_step import DEFAULT_MID_TIMES, DEFAULT_SIGMA_MAX, sample_few_step
from megatron_rcm.diffusion.guidance import ClassifierFreeGuidance
from megatron_rcm.diffusion.teacher_sampling import sample_rf_euler
from megatron_rcm.generation import SamplerNetwork

SAMPLERS = ("euler", "few-step")
REFERENCE_SEED = 20_000_000  # real reference videos: far from the training and sampling seeds

FEATURE_DIM = 64
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[2] / "assets" / "moving_digits" / "classifier.safetensors"


class DigitsClassifier(torch.nn.Module):
    """[N, 1, T, H, W] videos -> (digit logits [N, 10], direction logits [N, 8]); ``features`` [N, 64]."""

    def __init__(self):
        super().__init__()
        self.convs = torch.nn.ModuleList([
            torch.nn.Conv3d(1, 16, 3, padding=1),
            torch.nn.Conv3d(16, 32, 3, stride=(1, 2, 2), padding=1),
            torch.nn.Conv3d(32, FEATURE_DIM, 3, stride=2, padding=1),
            torch.nn.Conv3d(FEATURE_DIM, FEATURE_DIM, 3, padding=1),
        ])
        self.digit_head = torch.nn.Linear(FEATURE_DIM, NUM_DIGITS)
        self.direction_head = torch.nn.Linear(FEATURE_DIM, len(DIRECTIONS))

    def features(self, videos):
        x = videos
        for conv in self.convs:
            x = nn_functional.gelu(conv(x))
        return x.mean(dim=(2, 3, 4))

    def forward(self, videos):
        f = self.features(videos)
        return self.digit_head(f), self.direction_head(f)


def load_classifier(path=DEFAULT_WEIGHTS) -> DigitsClassifier:
    from safetensors.torch import load_file

    model = DigitsClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)


@torch.no_grad()
def classify(classifier, videos, batch_size=256):
    """(features [N, 64], digit predictions [N], direction predictions [N]) in float32."""
    outputs = []
    for chunk in videos.float().split(batch_size):
        f = classifier.features(chunk)
        outputs.append((f, classifier.digit_head(f).argmax(1), classifier.direction_head(f).argmax(1)))
    return tuple(torch.cat(parts) for parts in zip(*outputs))


def prompt_accuracy(digit_pred, direction_pred, digits, directions) -> dict:
    """Fractions of videos whose digit, direction, and both, match their prompt."""
    digit_ok, direction_ok = digit_pred == digits, direction_pred == directions
    return {"digit_acc": digit_ok.double().mean().item(), "direction_acc": direction_ok.double().mean().item(),
            "joint_acc": (digit_ok & direction_ok).double().mean().item()}


def _sqrtm_psd(m):
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(features_a, features_b) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2) of Gaussians fitted to two sets, in float64."""
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    root_a = _sqrtm_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    return ((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross).item()


def diversity(features, groups) -> float:
    """Mean over groups (e.g. prompts) of the mean pairwise L2 distance between the group's features."""
    per_group = []
    for g in groups.unique():
        f = features[groups == g].double()
        if len(f) < 2:
            raise ValueError(f"group {int(g)} has {len(f)} sample(s); diversity needs at least 2 per group")
        d = torch.cdist(f, f)
        per_group.append(d.sum() / (len(f) * (len(f) - 1)))
    return torch.stack(per_group).mean().item()


def reference_videos(split: str, count: int = 2000) -> torch.Tensor:
    """The fixed real videos FD is measured against: ``count`` of ``split`` ("val" while choosing
    hyperparameters, "test" for the reported table)."""
    return make_videos(split, count, seed=REFERENCE_SEED).videos


def video_metrics(classifier, videos, digits, directions, reference_features) -> dict:
    """Accuracy against the prompts, FD against ``reference_features`` (real held-out videos), and
    diversity across the videos of each (digit, direction) prompt."""
    features, digit_pred, direction_pred = classify(classifier, videos)
    return {**prompt_accuracy(digit_pred, direction_pred, digits, directions),
            "fd": frechet_distance(features, reference_features),
            "diversity": diversity(features, digits * len(DIRECTIONS) + directions)}


def student_sampler(path, mid_times=None) -> dict:
    """The few-step sampler settings (``sigma_max``, ``mid_times``) for the student at ``path``: those
    its training run recorded with the export (the DMD rollout trained it at those times), the
    defaults for a folder without a record; ``mid_times`` overrides the recorded times."""
    from megatron_rcm.loading import recorded_sampler

    recorded = recorded_sampler(path)
    return {"sigma_max": float(recorded.get("sigma_max", DEFAULT_SIGMA_MAX)),
            "mid_times": tuple(map(float, mid_times or recorded.get("mid_times", DEFAULT_MID_TIMES)))}


def generate(model, sampler, digits, directions, seed, steps, cfg=2.5, shift=1.0, tick=lambda: None,
             sigma_max=DEFAULT_SIGMA_MAX, mid_times=DEFAULT_MID_TIMES):
    """Videos [N, 1, T, H, W] for the prompts "a D moving DIR" from the noise of ``seed``: a teacher
    by RF Euler with classifier-free guidance ``cfg`` against the toy encoder's negative prompt
    (``sampler="euler"``), or a distilled student by the rCM few-step sampler (``"few-step"``,
    ``sigma_max`` and ``mid_times`` as ``student_sampler`` gives them, its fresh noise drawn after
    the initial noise from the same generator). ``tick`` is called once per network call (one per
    step: guidance batches its two branches), e.g. a progress bar's."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    encoder = ToyTextEncoder()
    text = encoder.encode_batch([prompt_for(int(d), int(k)) for d, k in zip(digits, directions)])
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(digits), *MovingDigitsSpec().latent_shape, generator=gen)
    model = SamplerNetwork(model, next(model.parameters()).dtype, tick)
    with torch.no_grad():
        if sampler == "euler":
            guided = ClassifierFreeGuidance(model, encoder.negative(), cfg)
            return sample_rf_euler(guided, noise, text, steps, shift=shift)
        return sample_few_step(TrigFlowDenoiser(model), noise, text, steps, sigma_max, mid_times, generator=gen)


LABEL_WIDTH, HEADER_HEIGHT = 176, 28  # pixels of the row labels (left) and column labels (top)


def _text_strip(labels, height, width, vertical):
    """uint8 [height, width]: the labels (each may hold a line break) white on black, one above the
    other (``vertical``) or side by side, each centred in its share of the strip."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (width, height))
    draw = ImageDraw.Draw(image)
    share = (height if vertical else width) / len(labels)
    for i, label in enumerate(labels):
        left, top, right, bottom = draw.multiline_textbbox((0, 0), label)
        x = 4 if vertical else (i + 0.5) * share - (right - left) / 2
        y = (i + 0.5) * share - (bottom - top) / 2 if vertical else (height - (bottom - top)) / 2
        draw.multiline_text((x, y), label, fill=255, align="center")
    return np.asarray(image)


def write_gif(videos, path, scale=4, column_labels=None):
    """One row per entry of ``videos`` (name -> [N, 1, T, H, W] in about [-1, 1]), one column per
    video; each row is labelled with its name on the left, each column with ``column_labels`` on top."""
    import imageio.v2 as imageio  # only here: the metrics need neither imageio nor Pillow

    rows = [torch.cat(list(v[:, 0]), dim=-1) for v in videos.values()]  # each [T, H, N*W]
    grid = torch.cat(rows, dim=-2)  # [T, rows*H, N*W]
    frames = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    frames = np.kron(frames, np.ones((1, scale, scale), dtype=np.uint8))
    names = _text_strip(list(videos), frames.shape[1], LABEL_WIDTH, vertical=True)
    frames = np.concatenate([np.broadcast_to(names, (len(frames), *names.shape)), frames], axis=2)
    if column_labels:
        header = np.zeros((HEADER_HEIGHT, frames.shape[2]), dtype=np.uint8)
        header[:, LABEL_WIDTH:] = _text_strip(column_labels, HEADER_HEIGHT, frames.shape[2] - LABEL_WIDTH,
                                              vertical=False)
        frames = np.concatenate([np.broadcast_to(header, (len(frames), *header.shape)), frames], axis=1)
    imageio.mimsave(path, list(frames), duration=0.25, loop=0)
