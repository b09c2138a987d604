"""The DMD/sCM balance through a real network (docs/math.md eq. 4.7): the parameter-gradient norms of
the two student terms at two latent sizes, with the shipped Moving Digits teacher.

    .venv/bin/python tools/digits_balance.py            # about 1 minute on 2 CPU cores

The student is the teacher itself and the fake score the unguided teacher, as at the start of a
distillation; batches of 8 fresh train-split videos at the digits' size (8 frames of 16 x 16,
N = 2,048) and at 8x the elements (16 frames of 32 x 32, outside the teacher's training size).
The sCM term takes the discrete tangent (``--dcm-step``, default 0.05) so that no JVP runs in the
Triton interpreter; its target is normalised either way. Prints, per size, the mean ratio
||grad(dmd_weight L_DMD)|| / ||grad(scm_weight L_sCM)|| at the recipe's weights (100 / 1) and the
mean rms of the DMD direction d.
"""

import argparse
import math

import torch

from megatron_rcm import cli
from megatron_rcm.data.moving_digits import MovingDigitsSpec, make_videos
from megatron_rcm.data.toy_text_encoder import ToyTextEncoder
from megatron_rcm.diffusion.denoiser import TrigFlowDenoiser
from megatron_rcm.diffusion.guidance import ClassifierFreeGuidance
from megatron_rcm.diffusion.time_sampling import sample_time_dmd, sample_time_scm
from megatron_rcm.losses.config import RCMConfig
from megatron_rcm.losses.rcm import Denoisers, IterationNoise, student_loss

from distill_digits import TEACHER  # tools/ is this script's directory


def gradient_norms(denoisers, student, spec, seed, batch, dcm_step):
    """(sCM, DMD) parameter-gradient norms and rms(d) for one batch of ``spec`` videos."""
    encoder = ToyTextEncoder()
    videos = make_videos("train", batch, seed=seed, spec=spec)
    x0, text = videos.videos, encoder.encode_batch(videos.prompts)
    g = torch.Generator().manual_seed(seed)
    noise = IterationNoise(eps=torch.randn(x0.shape, generator=g),
                           t_scm=sample_time_scm(batch, 0.0, 1.6, generator=g).float(),  # the digits recipe's p_G
                           rollout=[torch.randn(x0.shape, generator=g)],
                           t_dmd=sample_time_dmd(batch, 5.0, generator=g).float(), eps_dmd=torch.randn(x0.shape, generator=g))
    norms, rms_d = [], None
    for weights in ({"dmd_weight": 0.0}, {"scm_weight": 0.0}):
        config = RCMConfig(tangent_warmup=0, max_rollout_steps=1, dcm_step=dcm_step, **weights)
        student.zero_grad(set_to_none=True)
        loss, diagnostics = student_loss(denoisers, config, x0, text, noise, iteration=0, student_updates=0)
        loss.backward()
        norms.append(torch.cat([p.grad.flatten() for p in student.parameters() if p.grad is not None]).norm().item())
        if "dmd/direction_norm" in diagnostics:
            rms_d = diagnostics["dmd/direction_norm"].item() / x0[0].numel() ** 0.5
    return norms[0], norms[1], rms_d


def build_parser():
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=cli.positive_int, default=8,
                   help="batches per latent size, data and noise seeds 0..N-1; the table shows means over them "
                        "(default: %(default)s)")
    p.add_argument("--batch", type=cli.positive_int, default=8, help="videos per batch (default: %(default)s)")
    p.add_argument("--dcm-step", type=float, default=0.05,
                   help="TrigFlow step of the sCM term's discrete tangent, >= 0 (RCMConfig.dcm_step; 0: the JVP, "
                        "in the Triton interpreter on CPU) (default: %(default)s)")
    p.add_argument("--threads", type=cli.positive_int, default=2, help="torch CPU threads (default: %(default)s)")
    return p


def measure(args):
    """Print the table: per latent size, the gradient ratio and rms(d), means over the batches."""
    # megatron-core loads here, after the flags are checked: a wrong one is refused at once
    from megatron_rcm import load_model
    from megatron_rcm.parallel import ParallelConfig, parallel_context

    torch.set_num_threads(args.threads)
    with parallel_context(ParallelConfig()):
        teacher, student, fake = (load_model(str(TEACHER)).eval() for _ in range(3))
        denoisers = Denoisers(TrigFlowDenoiser(ClassifierFreeGuidance(teacher, ToyTextEncoder().negative(), 2.5)),
                              TrigFlowDenoiser(student), TrigFlowDenoiser(fake))
        print("| latent | N | DMD/sCM gradient ratio | rms(d) | ratio / rms(d) |\n|---|---|---|---|---|")
        for spec in (MovingDigitsSpec(8, 16), MovingDigitsSpec(16, 32)):
            rows = [gradient_norms(denoisers, student, spec, seed, args.batch, args.dcm_step)
                    for seed in range(args.batches)]
            ratio = sum(dmd / scm for scm, dmd, _ in rows) / len(rows)
            rms_d = sum(r for _, _, r in rows) / len(rows)
            print(f"| {spec.frames} x {spec.size} x {spec.size} | {spec.frames * spec.size ** 2} | {ratio:.3f} | "
                  f"{rms_d:.3f} | {ratio / rms_d:.3f} |", flush=True)


def _check(parser, args):
    if not 0 <= args.dcm_step < math.inf:
        parser.error(f"--dcm-step must be a number >= 0 (0: the JVP), not {args.dcm_step:g}")


def main():
    parser = build_parser()
    args = parser.parse_args()
    _check(parser, args)
    measure(args)


if __name__ == "__main__":
    main()
