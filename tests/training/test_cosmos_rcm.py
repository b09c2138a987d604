"""A tiny Cosmos-Predict2 rCM run on image latents (T = 1) with examples/pretrain_rcm.py --model: every
loss is finite, 3 + resume + 3 iterations equal 6 straight exactly, a TP=2 run (its per-head q/k norm
gradients summed over TP by finalize_model_grads) equals it to float32 rounding; --model must match
the teacher."""

import math
import shutil

import pytest

from megatron_rcm.training.checkpointing import TRACKER, checkpoint_name

from .tiny_setup import assert_close, compared, make_inputs, read_jsonl, torchrun

PRESET, LATENT = "cosmos-tiny-a", (1, 4, 6)  # one latent frame: 6 tokens at patch (1, 2, 2)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return [*make_inputs(tmp_path_factory.mktemp("inputs"), preset=PRESET, latent=LATENT), "--model", PRESET]


def _run(inputs, folder, nproc=1, *extra):
    log = folder / "log.jsonl"
    torchrun(nproc, [*inputs, "--save", str(folder / "ckpt"), "--save-interval", "3", "--log-jsonl", str(log), *extra])
    return read_jsonl(log)


@pytest.fixture(scope="module")
def straight(inputs, tmp_path_factory):
    """Six iterations on one process, and its folder."""
    folder = tmp_path_factory.mktemp("straight")
    return folder, _run(inputs, folder)


def test_cosmos_run_trains_and_resumes_exactly(inputs, straight, tmp_path):
    folder, straight = straight
    assert [r["iteration"] for r in straight] == [1, 2, 3, 4, 5, 6]
    values = [v for record in compared(straight) for v in record.values()]
    assert len(values) >= 6 and all(math.isfinite(v) for v in values)

    resumed_folder = tmp_path / "resumed" / "ckpt"
    resumed_folder.mkdir(parents=True)
    shutil.copytree(folder / "ckpt" / checkpoint_name(3), resumed_folder / checkpoint_name(3))
    (resumed_folder / TRACKER).write_text("3")
    resumed = _run(inputs, tmp_path / "resumed")
    assert [r["iteration"] for r in resumed] == [4, 5, 6]
    assert compared(resumed) == compared(straight[3:])


def test_tensor_parallel_run_equals_the_single_process_run(inputs, straight, tmp_path):
    _, straight = straight
    tp2 = _run(inputs, tmp_path, 2, "--tensor-model-parallel-size", "2", "--sequence-parallel")
    assert_close(tp2, straight, 1e-6)  # float32 through another reduction order for six iterations


def test_model_preset_must_match_the_teacher(inputs, tmp_path):
    with pytest.raises(AssertionError, match="is not a cosmos-predict2-2b model"):
        _run([*inputs, "--model", "cosmos-predict2-2b"], tmp_path)
