"""The bad-input catalogue (tests/reliability/catalogue.py, docs/reliability.md), one parametrised
test per entry point. Each entry point runs as a real process; the entries of one entry point share
one process (tests/reliability/driver.py), so that torch and megatron-core are imported once.

Every entry: a non-zero exit status, exactly one line on stderr (``PROG: error: ...``) that contains
the entry's fragment, no Python traceback, and nothing under the inputs folder changed, added or
left behind (outputs, temporary folders)."""

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from ..training.tiny_setup import ROOT, TINY_CONFIG, make_inputs
from .catalogue import CONVERT, GENERATE, LOAD_MODEL, PLAN, PREPARE_DATA, PRETRAIN
from .driver import run_cases

HERE = Path(__file__).resolve().parent
SCRIPTS = {"convert_checkpoint": ROOT / "tools" / "convert_checkpoint.py",
           "pretrain_rcm": ROOT / "examples" / "pretrain_rcm.py", "generate": ROOT / "examples" / "generate.py",
           "prepare_data": ROOT / "tools" / "prepare_data.py", "plan": ROOT / "tools" / "plan.py"}
ENTRIES = {"convert_checkpoint": CONVERT, "pretrain_rcm": PRETRAIN, "generate": GENERATE,
           "prepare_data": PREPARE_DATA, "plan": PLAN}
BATCH_SECONDS = 400
# the first test of each entry point also runs its whole batch (the module's fixtures)
pytestmark = pytest.mark.timeout(2 * BATCH_SECONDS)


class _RunsCode:
    """A pickle that would run code if loaded without weights_only."""

    def __reduce__(self):
        return (print, ("UNSAFE-UNPICKLE",))


def _random_bytes(count):
    """Bytes no format reads, the same every run (the messages that quote them are in the docs)."""
    return torch.randint(0, 256, (count,), dtype=torch.uint8, generator=torch.Generator().manual_seed(count)).numpy().tobytes()


def _diffusers_copy(teacher, folder, edit=None, config=None):
    shutil.copytree(teacher, folder)
    if config is not None:
        (folder / "config.json").write_text(config)
    if edit is not None:
        from safetensors.torch import load_file, save_file

        weights = folder / "diffusion_pytorch_model.safetensors"
        state = load_file(weights)
        edit(state)
        save_file(state, weights)
    return folder


def _megatron_checkpoint(teacher, folder):
    from megatron_rcm.convert.api import convert_checkpoint

    convert_checkpoint("diffusers", "megatron", teacher, folder, progress=False)
    return folder


def _write_inputs(root):
    """Every bad input of the catalogue under ``root``; returns {name: path}."""
    make_inputs(root / "good")
    teacher = root / "good" / "teacher"
    weights = (teacher / "diffusion_pytorch_model.safetensors").read_bytes()
    first_key = "condition_embedder.time_embedder.linear_1.weight"
    p = {"teacher": teacher, "data": root / "good" / "data", "negative": root / "good" / "negative.pt",
         "tiny_config": TINY_CONFIG, "missing": root / "no" / "such" / "path", "empty": root / "empty",
         "out": root / "out", "existing_dir": root / "existing_dir", "existing_file": root / "existing_file.txt"}
    for folder in (p["empty"], p["existing_dir"]):
        folder.mkdir()
    p["existing_file"].write_text("keep me\n")
    p["truncated"] = _diffusers_copy(teacher, root / "truncated")
    (p["truncated"] / "diffusion_pytorch_model.safetensors").write_bytes(weights[: len(weights) // 2])
    p["random_bytes"] = _diffusers_copy(teacher, root / "random_bytes")
    (p["random_bytes"] / "diffusion_pytorch_model.safetensors").write_bytes(_random_bytes(4096))
    p["malformed_json"] = _diffusers_copy(teacher, root / "malformed_json", config='{"_class_name": "WanTransfor')
    config = json.loads((teacher / "config.json").read_text())
    p["other_class"] = _diffusers_copy(teacher, root / "other_class",
                                       config=json.dumps({**config, "_class_name": "UNet2DConditionModel"}))
    p["missing_key"] = _diffusers_copy(teacher, root / "missing_key", edit=lambda s: s.pop(first_key))
    p["extra_key"] = _diffusers_copy(teacher, root / "extra_key", edit=lambda s: s.update(extra=torch.zeros(2)))
    p["wrong_shape"] = _diffusers_copy(teacher, root / "wrong_shape",
                                       edit=lambda s: s.update({first_key: torch.randn(3, 5)}))
    p["pickle_pt"] = root / "pickle.pt"
    p["pickle_pt"].write_bytes(pickle.dumps({"patch_embedding.weight": _RunsCode()}, protocol=2))
    p["random_pth"] = root / "random.pth"
    p["random_pth"].write_bytes(_random_bytes(4096))
    p["megatron"] = _megatron_checkpoint(teacher, root / "megatron")
    p["bad_tracker"] = root / "bad_tracker"
    p["bad_tracker"].mkdir()
    (p["bad_tracker"] / "latest_checkpointed_iteration.txt").write_text("7")
    p["random_shard_dir"] = root / "random_shards"
    p["random_shard_dir"].mkdir()
    (p["random_shard_dir"] / "shard-000000.tar").write_bytes(_random_bytes(10240))
    p["truncated_shard_dir"] = root / "truncated_shards"
    p["truncated_shard_dir"].mkdir()
    shard = sorted(Path(p["data"]).glob("*.tar"))[0]
    with tarfile.open(shard) as tar:  # cut where the last sample begins: the tar still reads
        cut = [m.offset for m in tar.getmembers() if m.name.startswith(tar.getmembers()[-1].name.split(".")[0])][0]
    (p["truncated_shard_dir"] / shard.name).write_bytes(shard.read_bytes()[:cut])
    p["negative_wrong_shape"] = root / "negative_wrong_shape.pt"
    torch.save(torch.randn(3, 7), p["negative_wrong_shape"])
    yamls = {"malformed_yaml": "train_iters: [1, 2\n", "list_yaml": "- train_iters\n- 3\n",
             "unknown_key_yaml": "train_iters: 3\nlearning_rate: 0.1\n", "float_iters_yaml": "train_iters: 2.5\n",
             "string_lr_yaml": "train_iters: 3\nlr: fast\n", "bad_choice_yaml": "train_iters: 3\ncp_comm_type: ring\n"}
    for name, text in yamls.items():
        p[name] = root / f"{name}.yaml"
        p[name].write_text(text)
    return {k: str(v) for k, v in p.items()}


def _tree(root):
    """{relative path: content hash} of every file and folder under ``root``."""
    tree = {}
    for path in sorted(Path(root).rglob("*")):
        tree[str(path.relative_to(root))] = (hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file()
                                             else "folder")
    return tree


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    return root, _write_inputs(root)


def _environment():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONWARNINGS", None)  # stderr as a user sees it
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID"):
        env.pop(name, None)
    env["MASTER_PORT"] = str(29000 + os.getpid() % 1000)
    return env


@pytest.fixture(scope="module")
def outcomes(bad_inputs, tmp_path_factory):
    """{entry point: {entry id: {"status", "stderr"}}}, each entry point's entries run in one process;
    the inputs folder is compared before and after each."""
    root, paths = bad_inputs
    work = tmp_path_factory.mktemp("runs")
    results = {}
    for name, entries in ENTRIES.items():
        before = _tree(root)
        cases = [{"id": e.id, "argv": [a.format(**paths) for a in e.argv]} for e in entries]
        results[name] = run_cases(SCRIPTS[name], cases, work, _environment(), BATCH_SECONDS)
        results[name]["_tree_changes"] = sorted(set(_tree(root).items()) ^ set(before.items()))
    return results


def _assert_documented(name, case, status, message, root):
    """docs/reliability.md's row of this entry shows what it answered (the inputs folder as …)."""
    row = f"| `{name}` | `{case}` | {status} | {message.replace(str(root), '…')} |"
    assert row in (ROOT / "docs" / "reliability.md").read_text(), f"docs/reliability.md: the row should read\n{row}"


@pytest.mark.parametrize("name,entry", [(name, entry) for name, entries in ENTRIES.items() for entry in entries],
                         ids=lambda value: value if isinstance(value, str) else value.id)
def test_tool_refuses(outcomes, bad_inputs, name, entry):
    """One line on stderr, naming the tool and what to change; a failing status; the tree untouched;
    the line as the docs show it."""
    got = outcomes[name][entry.id]
    lines = [line for line in got["stderr"].splitlines() if line.strip()]
    detail = f"{name} {entry.id}: status {got['status']}, stderr:\n{got['stderr'][-3000:]}"
    assert isinstance(got["status"], int) and got["status"] != 0, detail
    assert "Traceback" not in got["stderr"] and len(lines) == 1, detail
    assert lines[0].split(":")[0] in (name, f"{name}.py") and ": error: " in lines[0], detail
    assert entry.expect.lower() in lines[0].lower(), detail
    assert "UNSAFE-UNPICKLE" not in got["stderr"]
    assert outcomes[name]["_tree_changes"] == [], outcomes[name]["_tree_changes"]
    _assert_documented(name, entry.id, got["status"], lines[0], bad_inputs[0])


@pytest.fixture(scope="module")
def load_model_outcomes(bad_inputs, tmp_path_factory):
    root, paths = bad_inputs
    work = tmp_path_factory.mktemp("load_model")
    before = _tree(root)
    (work / "paths.json").write_text(json.dumps(paths))
    subprocess.run([sys.executable, str(HERE / "load_model_cases.py"), str(work / "paths.json"),
                    str(work / "out.json")], cwd=ROOT, env=_environment(), timeout=BATCH_SECONDS, check=True)
    return json.loads((work / "out.json").read_text()), sorted(set(_tree(root).items()) ^ set(before.items()))


@pytest.mark.parametrize("case, expect", LOAD_MODEL, ids=[c for c, _ in LOAD_MODEL])
def test_load_model_refuses(load_model_outcomes, bad_inputs, case, expect):
    """A ValueError or OSError (what a caller catches for bad input) with a one-line message, as the
    docs show it."""
    results, changes = load_model_outcomes
    got = results[case]
    assert got["error"] and ("ValueError" in got["error"] or "OSError" in got["error"]), got
    assert "\n" not in got["message"] and expect.lower() in got["message"].lower(), got
    assert changes == []
    _assert_documented("load_model", case, got["error"][0], got["message"], bad_inputs[0])


def test_docs_list_every_entry():
    text = (ROOT / "docs" / "reliability.md").read_text()
    rows = [(name, e.id) for name, entries in ENTRIES.items() for e in entries]
    rows += [("load_model", case) for case, _ in LOAD_MODEL]
    missing = [row for row in rows if f"| `{row[0]}` | `{row[1]}` |" not in text]
    assert not missing and f"{len(rows)} entries" in text, missing


def test_every_trainer_flag_says_what_it_does_and_its_default():
    """--help reads as one voice: the help of each flag (its own, or its config field's docstring)
    starts in lower case unless it starts with a name, ends without a full stop, and gives the
    default once, either in its own words or as argparse's "(default: ...)"."""
    from megatron_rcm.training.arguments import _parser

    parser = _parser()
    assert [a.dest for a in parser._actions if not a.help] == []
    text = parser.format_help()
    assert "(default: 1234)" in text and "(default: 3)" in text  # --seed, --max-skipped-batches
    formatter = parser._get_formatter()
    for action in parser._actions[1:]:  # after --help
        shown = formatter._get_help_string(action)
        assert not action.help.endswith(".") and not re.match(r"[A-Z][a-z-]+\s", action.help), action.option_strings
        assert "default" in shown and shown.count("(default:") <= 1, (action.option_strings, shown)
    required = [a.option_strings[0] for a in parser._actions if "required" in (a.help or "")]
    assert required == ["--train-iters", "--teacher", "--data-path"]  # validate() refuses a run without them
