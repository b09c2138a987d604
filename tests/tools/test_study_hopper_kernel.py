"""tools/study_hopper_kernel.py's parts that need no GPU: every ablation still applies to the kernel's
source, leaves valid Python and keeps all of the kernel's GEMMs once compiled for sm_90a; a kernel that
lost an ablated line is named; the SASS order and the flag on dropped GEMMs."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import study_hopper_kernel as study  # noqa: E402

# nvdisasm's lines as Triton's CompiledKernel.asm["sass"] gives them (control codes, then the instruction)
SASS = """\
--:-:-:-:1\tWARPGROUP.ARRIVE;
--:-:-:-:1\tHGMMA.64x64x16.F32.BF16 R56, gdesc[UR44], RZ, !UPT;
--:-:-:-:4\tHGMMA.64x64x16.F32.BF16 R56, gdesc[UR20], R56, gsb0;
--:-:-:-:1\tHGMMA.64x128x16.F32.BF16 R88, R216, gdesc[UR28].tnspB, R88;
--:-:-:-:2\tWARPGROUP.DEPBAR.LE gsb0, 0x3;
--:-:-:-:1\tBAR.SYNC.DEFER_BLOCKING 0x0;
--:-:-:-:1\tFMNMX R14, R153, R152, !PT;
--:-:-:-:2\tWARPGROUP.DEPBAR.LE gsb0, 0x0;
--:-:-:-:1\tMUFU.EX2 R217, R217;
--:-:-:-:1\tMUFU.EX2 R218, R218;
"""


@pytest.mark.parametrize("name", list(study.ABLATIONS))
def test_every_ablation_applies_to_the_kernel_and_leaves_valid_python(name):
    source = study.KERNEL.read_text()
    ablated = study.ablated_source(source, name)
    assert ablated != source
    ast.parse(ablated)


def test_a_kernel_without_an_ablated_line_is_named():
    source = study.KERNEL.read_text().replace("return acc * alpha_o, acc_t * alpha_o", "return acc, acc_t")
    with pytest.raises(ValueError, match="no_rescale: the kernel no longer has 'return acc \\* alpha_o"):
        study.ablated_source(source, "no_rescale")


def test_sass_order_counts_runs_of_gemms_waits_exp2_and_barriers():
    assert study.sass_order(SASS) == "S2 V D3 B D0 E2"


def test_an_ablation_that_lost_gemms_is_flagged():
    assert "not a measurement" in study._describe(SASS, kernel_gemms=72)
    assert "not a measurement" not in study._describe(SASS, kernel_gemms=3)


def test_every_ablation_keeps_all_of_the_kernels_gemms_when_compiled_for_sm90a():
    """--sass compiles each build for sm_90a without a GPU: an ablation the compiler
    shrinks by dropping GEMMs would time less work, not less of the piece it takes out."""
    tool = study.KERNEL.parents[2] / "tools" / "study_hopper_kernel.py"
    result = subprocess.run([sys.executable, str(tool), "--sass"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = dict(re.findall(r"^  (\w+): (\d+) GEMM instructions", result.stdout, re.M))
    assert set(counts) == {"kernel", *study.ABLATIONS}, result.stdout
    assert set(counts.values()) == {"72"} and "not a measurement" not in result.stdout, result.stdout
