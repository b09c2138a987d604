"""tools/tune_flash_jvp.py's verdicts: which candidate configs count as correct, and which
pipeline shape it proposes for each kind of call (its GPU run picks the defaults from these)."""
import sys
from pathlib import Path

import pytest
import torch

from megatron_rcm.kernels import AttentionJVPOutput
from megatron_rcm.kernels.flash_jvp import launch
from megatron_rcm.testing import relative_error

from .helpers import random_inputs, reference_jvp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import tune_flash_jvp as sweep  # noqa: E402


def _row(kernel, numbers, ms, errors, current=False):
    return dict(kernel=kernel, config=str(numbers), numbers=numbers, ms=ms, errors=errors, status="ok",
                current=current)


def test_judge_checks_out_and_out_t_against_the_limit_and_lse_against_the_current_config():
    rows = [_row("hopper", [128, 64, 2, False], 1.0, [2e-3, 2.5e-3, 1e-7, 4e-4], current=True),
            _row("hopper", [64, 64, 2, False], 0.9, [2e-3, 5.1e-3, 1e-7, 4e-4]),
            _row("hopper", [64, 32, 2, False], 0.8, [2e-3, 2.5e-3, 1e-7, 6.1e-4 + 1e-6]),
            _row("hopper", [64, 64, 1, True], 0.7, [2e-3, 4.9e-3, 1e-7, 5.9e-4])]
    sweep._judge(rows, 5e-3)
    assert [r["status"].split(":")[0] for r in rows] == ["ok", "wrong", "wrong", "ok"]
    assert sweep.fastest(rows, "hopper")["numbers"] == [64, 64, 1, True]


def test_the_proposed_config_is_correct_in_every_case_of_its_kind_and_least_slow_at_worst():
    short = sweep.Case(1, 12, 32760, 512, 128, False)
    odd = sweep.Case(2, 12, 20001, 226, 128, False)
    long_keys = sweep.Case(1, 12, 32760, 32760, 128, True)
    a, b, c = [128, 64, 2, False], [64, 64, 2, False], [64, 32, 2, True]
    results = {
        "cross": (short, [_row("hopper", a, 1.0, None), _row("hopper", b, 0.5, None), _row("hopper", c, 0.6, None),
                          _row("sdpa forward", None, 0.1, None)]),
        "odd": (odd, [_row("hopper", a, 1.0, None), _row("hopper", b, 0.4, None), _row("hopper", c, 0.3, None)]),
        "self": (long_keys, [_row("hopper", a, 30.0, None), _row("hopper", b, 29.0, None)]),
    }
    results["self"][1][1]["status"] = "wrong: out/out_t error above 0.005"
    picks = sweep.hopper_picks(results)
    # b: worst 0.4 / 0.3 = 1.33 (odd); c: worst 0.6 / 0.5 = 1.2 (cross)
    assert picks[(False, True)] == (tuple(c), 0.6 / 0.5)
    # the faster b gave wrong numbers for self-attention
    assert picks[(True, False)] == (tuple(a), 1.0)
    assert set(picks) == {(False, True), (True, False)}
    # the report's figure for the config in use: a is 1.0 / 0.3 of the fastest at the odd shape
    assert sweep.worst_ratios(results)[(False, True)][tuple(a)] == pytest.approx(1.0 / 0.3)


def _distinct_under_the_interpreter(configs):
    """The interpreter ignores warps and stages: one config per (BLOCK_M, BLOCK_N, descriptors)."""
    seen = {}
    for c in configs:
        seen.setdefault((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["USE_TMA"]), c)
    return list(seen.values())


@pytest.mark.parametrize("config", _distinct_under_the_interpreter(sweep._triton_candidates(None, smoke=False)),
                         ids=sweep._triton_name)
def test_each_triton_candidate_matches_the_reference_in_float64(config):
    """Over 226 keys (a partial last block for every BLOCK_N), with and without a key mask, with
    and without key tangents (the GPU sweep checks them in bf16 at the real shapes)."""
    inputs = random_inputs(2, 2, 150, 226, 32, torch.float64)
    mask = torch.rand(2, 226, generator=torch.Generator().manual_seed(3)) > 0.3
    q, k, v, q_t, k_t, v_t = inputs
    zeros = [torch.zeros_like(k), torch.zeros_like(v)]
    for key_mask in (None, mask):
        for kv, kv_for_reference in (((k_t, v_t), (k_t, v_t)), ((None, None), zeros)):
            got = launch(q, k, v, q_t, *kv, 0.3, key_mask, config)
            want = reference_jvp([q, k, v, q_t, *kv_for_reference], 0.3, key_mask)
            for name, actual, expected in zip(AttentionJVPOutput._fields, got, want):
                assert relative_error(actual, expected) <= 1e-12, (name, key_mask is not None, kv[0] is not None)


def test_the_report_names_the_pick_and_the_config_in_use(monkeypatch, capsys, tmp_path):
    """main's summary and JSON, from rows as sweep_case returns them (no GPU: the rows are made up)."""
    def made_up(name, case, args, device):
        rows = [_row("sdpa forward", None, 0.3, None), _row("hopper", [128, 64, 2, False, False], 1.0, [1e-3] * 4, True),
                _row("hopper", [64, 64, 2, False, False], 0.8, [1e-3] * 4)]
        for r in rows:
            r.update(case=name, x_flash=r["ms"] / 0.3, x_cudnn=None, tflops=1.0)
        return rows

    monkeypatch.setattr(sweep, "sweep_case", made_up)
    monkeypatch.setattr(sweep.torch.cuda, "get_device_name", lambda: "made up")
    # the made-up rows mark 128 x 64 x 2 as the config in use, whatever CONFIGS holds today
    hopper = pytest.importorskip("megatron_rcm.kernels.flash_jvp_hopper")
    monkeypatch.setattr(hopper, "CONFIGS", dict.fromkeys(hopper.CONFIGS, hopper.HopperConfig(128, 64, 2)))
    monkeypatch.setattr(sys, "argv", ["tune_flash_jvp.py", "--cases", "cross-const,odd-const",
                                      "--json", str(tmp_path / "sweep.json")])
    sweep.main()
    out = capsys.readouterr().out
    assert ("(False, True): HopperConfig(64, 64, 2, False, False),  # 1.000; now HopperConfig(128, 64, 2, False, "
            "False): 1.250") in out
    import json
    picks = json.loads((tmp_path / "sweep.json").read_text())["hopper_configs"]
    assert picks == [dict(kv_tangent=False, short_keys=True, config=[64, 64, 2, False, False], worst_ratio=1.0)]
