"""Bad paths and damaged files around a conversion: one line on stderr naming what to change, exit
status 1, nothing written or lost. The command lines run in one process (tests/reliability/driver.py)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from megatron_rcm.atomic_output import OutputExistsError, atomic_output_dir
from megatron_rcm.convert.api import convert_checkpoint
from megatron_rcm.convert.tensor_files import CheckpointFileError
from megatron_rcm.save_folder import TRACKER, CheckpointNotFoundError, checkpoint_name, latest_checkpoint_path

from ..reliability.driver import run_cases
from .checkpoints import leftovers, random_diffusers

ROOT = Path(__file__).resolve().parents[2]
TO_MEGATRON = ["--no-progress", "--from", "diffusers", "--to", "megatron"]


def _inputs(root):
    """{name: path} of a good diffusers folder, its Megatron conversion and the bad inputs built from them."""
    _, diffusers = random_diffusers(root)
    p = {"diffusers": diffusers, "megatron": root / "megatron", "file": root / "file.txt", "out": root / "out",
         "bad_metadata": root / "bad_metadata", "run_abc": root / "run_abc", "run_missing": root / "run_missing",
         "junk_common": root / "junk_common", "pipeline": root / "pipeline", "verified": root / "verified"}
    convert_checkpoint("diffusers", "megatron", diffusers, p["megatron"], progress=False)
    p["file"].write_text("keep me\n")
    shutil.copytree(p["megatron"], p["bad_metadata"])
    (p["bad_metadata"] / "metadata.json").write_text('{"sharded_backend": "torch_di')
    for run, tracker in ((p["run_abc"], "abc"), (p["run_missing"], "7")):
        shutil.copytree(p["megatron"], run / checkpoint_name(3))
        (run / TRACKER).write_text(tracker)
    shutil.copytree(p["megatron"], p["junk_common"])
    (p["junk_common"] / "common.pt").write_bytes(b"hello, not a torch file")
    p["pipeline"].mkdir()
    (p["pipeline"] / "model_index.json").write_text('{"_class_name": "WanPipeline"}')
    return {k: str(v) for k, v in p.items()}


CASES = {
    "output-is-a-file-with-overwrite": [*TO_MEGATRON, "--input", "{diffusers}", "--output", "{file}", "--overwrite"],
    "output-below-a-file": [*TO_MEGATRON, "--input", "{diffusers}", "--output", "{file}/a/b"],
    "malformed-megatron-metadata": ["--no-progress", "--from", "megatron", "--to", "diffusers",
                                    "--input", "{bad_metadata}", "--output", "{out}"],
    "tracker-not-a-number": ["--no-progress", "--to", "diffusers", "--input", "{run_abc}", "--output", "{out}"],
    "tracker-names-missing-iteration": ["--no-progress", "--from", "megatron", "--to", "diffusers",
                                        "--input", "{run_missing}", "--output", "{out}"],
    "verify-layers-beyond-the-model": [*TO_MEGATRON, "--input", "{diffusers}", "--output", "{out}", "--verify",
                                       "--verify-layers", "99"],
    "wan-from-a-diffusers-file": ["--no-progress", "--from", "wan", "--to", "megatron",
                                  "--input", "{diffusers}/diffusion_pytorch_model.safetensors", "--output", "{out}"],
    "diffusers-config-file-as-input": [*TO_MEGATRON, "--input", "{diffusers}/config.json", "--output", "{out}"],
    "pipeline-file-as-base": ["--no-progress", "--from", "diffusers", "--to", "diffusers-pipeline", "--input",
                              "{diffusers}", "--pipeline", "{pipeline}/model_index.json", "--output", "{out}"],
    "junk-common-pt": ["--no-progress", "--from", "megatron", "--to", "diffusers", "--input", "{junk_common}",
                       "--output", "{out}"],
    "verify-ok": [*TO_MEGATRON, "--input", "{diffusers}", "--output", "{verified}", "--verify"],
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """({case id: {"status", "stdout", "stderr"}}, input paths, the input tree before the runs)."""
    root = tmp_path_factory.mktemp("bad_input")
    paths = _inputs(root)
    cases = [{"id": name, "argv": [a.format(**paths) for a in argv]} for name, argv in CASES.items()]
    return run_cases(ROOT / "tools" / "convert_checkpoint.py", cases, tmp_path_factory.mktemp("runs")), paths


def _refused(outcomes, case, *fragments):
    """The case failed with one line holding every fragment, and wrote no output."""
    results, paths = outcomes
    got = results[case]
    lines = [line for line in got["stderr"].splitlines() if line.strip()]
    detail = f"{case}: status {got['status']}, stderr:\n{got['stderr'][-3000:]}"
    assert got["status"] == 1 and len(lines) == 1 and "Traceback" not in got["stderr"], detail
    assert lines[0].startswith("convert_checkpoint: error: ") and all(f in lines[0] for f in fragments), detail
    assert not Path(paths["out"]).exists() and leftovers(Path(paths["out"]).parent) == []
    return lines[0]


def test_an_output_that_is_a_file_is_refused_even_with_overwrite(outcomes, tmp_path):
    _refused(outcomes, "output-is-a-file-with-overwrite", "--output", "is not a folder")
    assert Path(outcomes[1]["file"]).read_text() == "keep me\n"
    target = tmp_path / "weights.bin"
    target.write_text("keep me")
    with pytest.raises(OutputExistsError, match="is not a folder"):
        with atomic_output_dir(target, overwrite=True) as tmp:
            (tmp / "new").write_text("never placed")
    assert target.read_text() == "keep me" and leftovers(tmp_path) == []


def test_an_output_that_cannot_be_created_is_one_line_naming_output(outcomes):
    _refused(outcomes, "output-below-a-file", "--output", "file.txt is not a folder")


@pytest.mark.skipif(os.geteuid() == 0 and shutil.which("setpriv") is None, reason="root, and no setpriv to drop it")
def test_paths_without_permission_are_one_line():
    """True EACCES (as root, from an unprivileged user: root may write and read anywhere): a read-only
    output parent, an input file and an input folder that others may not read."""
    base = Path(tempfile.mkdtemp())
    try:
        _, diffusers = random_diffusers(base)
        locked, closed, read_only, work = base / "locked", base / "closed", base / "read_only", base / "work"
        shutil.copytree(diffusers, locked)
        shutil.copytree(diffusers, closed)
        for folder, mode in ((base, 0o755), (diffusers, 0o755), (locked, 0o755), (closed, 0o700), (work, 0o777),
                             (read_only, 0o555)):
            folder.mkdir(exist_ok=True)
            folder.chmod(mode)
        for file, mode in ((diffusers / "diffusion_pytorch_model.safetensors", 0o644), (locked / "config.json", 0o600)):
            file.chmod(mode)
        cases = [{"id": "read-only", "argv": [*TO_MEGATRON, "--input", str(diffusers), "--output", f"{read_only}/out"]},
                 {"id": "read-only-nested", "argv": [*TO_MEGATRON, "--input", str(diffusers), "--output",
                                                     f"{read_only}/a/b"]},
                 {"id": "locked-input", "argv": [*TO_MEGATRON, "--input", str(locked), "--output", f"{work}/out"]},
                 {"id": "closed-input", "argv": [*TO_MEGATRON, "--input", str(closed), "--output", f"{work}/out"]}]
        (work / "cases.json").write_text(json.dumps(cases))
        user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        subprocess.run([*user, sys.executable, str(ROOT / "tests" / "reliability" / "driver.py"),
                        str(ROOT / "tools" / "convert_checkpoint.py"), str(work / "cases.json"),
                        str(work / "results.json")], cwd=ROOT, check=True, timeout=300)
        results = json.loads((work / "results.json").read_text())
        expected = {"read-only": f"--output {read_only}/out cannot be written: Permission denied ({read_only})",
                    "read-only-nested": f"--output {read_only}/a/b cannot be written: Permission denied ({read_only})",
                    "locked-input": f"{locked}/config.json: cannot be read (Permission denied)",
                    "closed-input": f"{closed}/config.json: cannot be read (Permission denied)"}
        for case, line in expected.items():
            assert results[case]["status"] == 1, results[case]
            assert results[case]["stderr"].strip() == f"convert_checkpoint: error: {line}", results[case]
        assert list(read_only.iterdir()) == [] and not (work / "out").exists()
    finally:
        (base / "read_only").chmod(0o755)
        shutil.rmtree(base)


def test_malformed_json_in_checkpoints_names_the_file(outcomes, tmp_path):
    _refused(outcomes, "malformed-megatron-metadata", "bad_metadata/metadata.json", "not a valid megatron")
    wan = tmp_path / "wan"
    convert_checkpoint("diffusers", "wan", outcomes[1]["diffusers"], wan, progress=False)
    (wan / "config.json").write_text('{"dim": ')
    with pytest.raises(CheckpointFileError, match=r"wan/config.json is not valid JSON"):
        convert_checkpoint("wan", "diffusers", wan, tmp_path / "out", progress=False)
    (wan / "config.json").write_text('{"dim": 16}')
    with pytest.raises(CheckpointFileError, match="config.json has no 'num_heads'"):
        convert_checkpoint("wan", "diffusers", wan, tmp_path / "out", progress=False)
    (wan / "config.json").unlink()
    index = wan / "diffusion_pytorch_model.safetensors.index.json"
    for text, expected in (('{"weight_map": ', "index.json is not valid JSON"), ("[]", "holds a JSON list"),
                           ('{"metadata": {}}', "no weight_map")):
        index.write_text(text)
        with pytest.raises(CheckpointFileError, match=expected):
            convert_checkpoint("wan", "diffusers", wan, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_tracker_problems_are_one_line(outcomes, tmp_path):
    _refused(outcomes, "tracker-not-a-number", f"{TRACKER} holds no iteration number", "complete: [3]")
    _refused(outcomes, "tracker-names-missing-iteration", "names iteration 7")
    (tmp_path / TRACKER).write_bytes(b"\xff\xfe")
    with pytest.raises(CheckpointNotFoundError, match="holds no iteration number.*complete: none"):
        latest_checkpoint_path(tmp_path)
    for iteration, complete in ((10, True), (7, False), (2, True)):  # 7: a copy cut short, no metadata.json
        (tmp_path / checkpoint_name(iteration)).mkdir()
        if complete:
            (tmp_path / checkpoint_name(iteration) / "metadata.json").write_text("{}")
    with pytest.raises(CheckpointNotFoundError, match=r"holds no iteration number.*\(complete: \[2, 10\]\)$"):
        latest_checkpoint_path(tmp_path)


def test_verify_layers_beyond_the_model_is_refused_before_writing(outcomes):
    _refused(outcomes, "verify-layers-beyond-the-model", "--verify-layers 99", "2 layers")


def test_wrong_kind_of_input_says_what_to_pass(outcomes):
    _refused(outcomes, "wan-from-a-diffusers-file", "looks like a diffusers checkpoint", "--from diffusers")
    _refused(outcomes, "diffusers-config-file-as-input", "config.json is a file", "folder")
    _refused(outcomes, "pipeline-file-as-base", "--pipeline", "is a file: pass the pipeline folder")
    _refused(outcomes, "junk-common-pt", "common.pt: not a readable torch state dict", "damaged")


def test_a_successful_verify_prints_no_diffusers_warning(outcomes):
    got = outcomes[0]["verify-ok"]
    assert got["status"] == 0 and "verify: max relative difference" in got["stdout"], got["stderr"]
    assert "kept in float32" not in got["stderr"], got["stderr"]
