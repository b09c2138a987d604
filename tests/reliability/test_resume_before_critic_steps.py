"""A run saved before its fake score's first update resumes, and equals a straight run.

During the tangent warm-up (1000 iterations in the Wan 1.3B recipe) and in sCM-only runs the fake
score never steps. megatron's FP32Optimizer (the CPU optimizer) saves its Adam step only when it is
not 0, so such a checkpoint came back without one and the resume failed with KeyError: 'step'."""

from tests.training.tiny_setup import compared, make_inputs, read_jsonl, torchrun

WARMUP = ["--tangent-warmup", "10"]  # every iteration of these runs updates the student only


def _run(inputs, folder, iters):
    torchrun(1, [*inputs, *WARMUP, "--train-iters", str(iters), "--save", str(folder / "ckpt"),
                 "--log-jsonl", str(folder / "log.jsonl")])
    return read_jsonl(folder / "log.jsonl")


def test_a_checkpoint_from_the_warm_up_resumes_exactly(tmp_path):
    inputs = make_inputs(tmp_path / "inputs")
    straight = _run(inputs, tmp_path / "straight", 4)
    assert {r["network"] for r in straight} == {"student"}
    _run(inputs, tmp_path / "resumed", 2)
    resumed = _run(inputs, tmp_path / "resumed", 4)  # the log is appended to: iterations 1-2, then 3-4
    assert [r["iteration"] for r in resumed] == [1, 2, 3, 4]
    assert compared(resumed) == compared(straight)
