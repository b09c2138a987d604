"""A tiny Cosmos-Predict2 rCM run on image latents (T = 1) with examples/pretrain_rcm.py --model: every
loss is finite, and 3 + resume + 3 iterations equal 6 straight, exactly; --model must match the teacher."""

import math
import shutil

import pytest

from megatron_rcm.training.checkpointing import TRACKER, checkpoint_name

from .tiny_setup import make_inputs, read_jsonl, torchrun

PRESET, LATENT = "cosmos-tiny-a", (1, 4, 6)  # one latent frame: 6 tokens at patch (1, 2, 2)
LOSSES = ("loss/student", "loss/scm", "loss/dmd", "loss/fake_score")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return [*make_inputs(tmp_path_factory.mktemp("inputs"), preset=PRESET, latent=LATENT), "--model", PRESET]


def _run(inputs, folder):
    log = folder / "log.jsonl"
    torchrun(1, [*inputs, "--save", str(folder / "ckpt"), "--save-interval", "3", "--log-jsonl", str(log)])
    return read_jsonl(log)


def _losses(records):
    return [{k: r[k] for k in LOSSES if k in r} for r in records]


def test_cosmos_run_trains_and_resumes_exactly(inputs, tmp_path):
    straight = _run(inputs, tmp_path / "straight")
    assert [r["iteration"] for r in straight] == [1, 2, 3, 4, 5, 6]
    values = [v for record in _losses(straight) for v in record.values()]
    assert len(values) >= 6 and all(math.isfinite(v) for v in values)

    resumed_folder = tmp_path / "resumed" / "ckpt"
    resumed_folder.mkdir(parents=True)
    shutil.copytree(tmp_path / "straight" / "ckpt" / checkpoint_name(3), resumed_folder / checkpoint_name(3))
    (resumed_folder / TRACKER).write_text("3")
    resumed = _run(inputs, tmp_path / "resumed")
    assert [r["iteration"] for r in resumed] == [4, 5, 6]
    assert _losses(resumed) == _losses(straight[3:])


def test_model_preset_must_match_the_teacher(inputs, tmp_path):
    with pytest.raises(AssertionError, match="is not a cosmos-predict2-2b model"):
        _run([*inputs, "--model", "cosmos-predict2-2b"], tmp_path)
