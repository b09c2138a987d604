"""rCM distillation on a 2-D class-conditional mixture of Gaussians, whose exact RF velocity is
known in closed form (the teacher is analytic, nothing to train), on CPU in minutes.

    python examples/distill_2d.py --method rcm     # scm | rcm | dmd
    python examples/distill_2d.py --method scm --quick

The class label is given to the networks as a text-embedding vector; the unconditional branch of
classifier-free guidance uses a fixed negative-prompt embedding whose distribution is the mixture of
all classes. An MLP student, initialised by regression onto the teacher's velocity (as the real
student starts from the teacher's weights), is distilled with the sCM term (docs/math.md section 3),
the DMD regulariser with its fake-score critic (section 4), or both (rCM), and its power EMA is
sampled with the few-step sampler (section 6). Prints one JSON line with the energy distance to the
target distribution (averaged over classes) of the student at 1, 2 and 4 steps and of the guided
teacher with 1, 4 and 50 Euler steps. The target is the data itself at --cfg 1, and the guided
teacher's ODE distribution (a 1000-step Euler reference) otherwise.
"""

import argparse
import copy
import json
import math
import time

import torch

from megatron_rcm import cli
from megatron_rcm.diffusion.denoiser import TrigFlowDenoiser
from megatron_rcm.diffusion.few_step import sample_few_step
from megatron_rcm.diffusion.guidance import ClassifierFreeGuidance
from megatron_rcm.diffusion.mlp_velocity import MLPVelocity
from megatron_rcm.diffusion.teacher_sampling import sample_rf_euler
from megatron_rcm.diffusion.time_sampling import sample_time_dmd, sample_time_scm
from megatron_rcm.losses.config import RCMConfig
from megatron_rcm.losses.dmd import rollout_steps
from megatron_rcm.losses.rcm import Denoisers, IterationNoise, critic_loss, student_loss
from megatron_rcm.training.ema import PowerEMA

TEXT_DIM = 8
# Per class: component means (the spread is COMPONENT_STD); three classes, eight components.
CLASS_MEANS = [
    [(-2.0, 1.5), (-1.0, 2.5), (-2.5, 2.8)],
    [(1.5, 1.5), (2.5, 0.5)],
    [(0.0, -1.5), (-1.5, -2.5), (1.5, -2.5)],
]
COMPONENT_STD = 0.25


class MixtureVelocity(torch.nn.Module):
    """Exact RF velocity E[eps - x0 | x_s] of the class's Gaussian mixture; the class is the
    embedding (or the negative embedding, for all classes) nearest to the text's first token."""

    def __init__(self, class_embeddings, negative_embedding):
        super().__init__()
        means = [m for cls in CLASS_MEANS for m in cls]
        self.register_buffer("means", torch.tensor(means, dtype=torch.float64))
        membership = torch.zeros(len(CLASS_MEANS) + 1, len(means), dtype=torch.bool)
        start = 0
        for c, cls in enumerate(CLASS_MEANS):
            membership[c, start:start + len(cls)] = True
            start += len(cls)
        membership[-1] = True  # the unconditional distribution: every component, equal class weights
        weights = torch.cat([torch.full((len(cls),), 1.0 / len(cls)) for cls in CLASS_MEANS]) / len(CLASS_MEANS)
        log_weights = torch.where(membership, weights.log(), -math.inf)
        self.register_buffer("log_weights", log_weights.double())
        self.register_buffer("keys", torch.cat([class_embeddings, negative_embedding[None]]).double())

    def forward(self, x, timestep, text):
        dtype = x.dtype
        x = x.double()
        s = (timestep.double() / 1000)[:, None, None]
        a = 1 - s
        label = (text[:, 0].double() @ self.keys.T).argmax(dim=1)
        var = a**2 * COMPONENT_STD**2 + s**2  # [B, 1, 1]
        residual = (x[:, None] - a * self.means[None]) / var  # [B, K, 2]
        log_p = self.log_weights[label] - 0.5 * (residual**2 * var).sum(-1) - torch.log(var[..., 0])
        w = torch.softmax(log_p, dim=1)[..., None]
        x0 = (w * (self.means[None] + a * COMPONENT_STD**2 * residual)).sum(1)
        eps = (w * s * residual).sum(1)
        return (eps - x0).to(dtype)


def sample_data(labels, generator):
    """Exact samples of each label's mixture."""
    out = torch.empty(len(labels), 2, dtype=torch.float64)
    for c, cls in enumerate(CLASS_MEANS):
        idx = (labels == c).nonzero().flatten()
        component = torch.randint(len(cls), (len(idx),), generator=generator)
        means = torch.tensor(cls, dtype=torch.float64)[component]
        out[idx] = means + COMPONENT_STD * torch.randn(len(idx), 2, generator=generator, dtype=torch.float64)
    return out


def energy_distance(x, y):
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| (V-statistic)."""
    return (2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean()).item()


class Problem:
    def __init__(self, cfg_scale):
        g = torch.Generator().manual_seed(1234)  # the problem is fixed; --seed varies the run
        self.class_embeddings = torch.randn(len(CLASS_MEANS), TEXT_DIM, generator=g, dtype=torch.float64)
        self.negative = torch.randn(TEXT_DIM, generator=g, dtype=torch.float64)
        self.teacher_net = MixtureVelocity(self.class_embeddings, self.negative)
        self.guided_net = ClassifierFreeGuidance(self.teacher_net, self.negative[None], cfg_scale)
        self.teacher = TrigFlowDenoiser(self.guided_net)
        self.cfg_scale = cfg_scale

    def text(self, labels):
        return self.class_embeddings[labels][:, None].float()

    def batch(self, size, generator):
        labels = torch.randint(len(CLASS_MEANS), (size,), generator=generator)
        return sample_data(labels, generator).float(), self.text(labels), labels


def pretrain_on_teacher(problem, args, generator):
    """Regress an MLP onto the unguided teacher velocity: the stand-in for 'start from the teacher'."""
    net = MLPVelocity(2, TEXT_DIM, hidden=args.hidden, depth=args.depth)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.pretrain_iters)
    for _ in range(args.pretrain_iters):
        x0, text, _ = problem.batch(args.batch, generator)
        s = torch.rand(args.batch, generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        x_s = (1 - s[:, None]) * x0 + s[:, None] * eps
        target = problem.teacher_net(x_s, 1000 * s, text)
        loss = (net(x_s, 1000 * s, text) - target).pow(2).sum(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return net


def distill(problem, args, generator):
    scm_on, dmd_on = args.method in ("scm", "rcm"), args.method in ("dmd", "rcm")
    config = RCMConfig(
        scm_weight=args.scm_weight if scm_on else 0.0,
        dmd_weight=args.dmd_weight if dmd_on else 0.0,
        p_mean=args.p_mean, p_std=args.p_std, dmd_shift=args.dmd_shift,
        tangent_warmup=args.tangent_warmup, student_update_freq=args.student_update_freq,
        guidance_scale=problem.cfg_scale,
    )
    teacher_copy = pretrain_on_teacher(problem, args, generator)
    student_net, fake_net = copy.deepcopy(teacher_copy), copy.deepcopy(teacher_copy)
    denoisers = Denoisers(problem.teacher, TrigFlowDenoiser(student_net), TrigFlowDenoiser(fake_net))
    student_opt = torch.optim.AdamW(student_net.parameters(), lr=args.lr, betas=(0.0, 0.999), weight_decay=0.01)
    fake_opt = torch.optim.AdamW(fake_net.parameters(), lr=args.fake_lr, betas=(0.0, 0.999), weight_decay=0.01)
    ema = PowerEMA(student_net, relative_std=0.1)
    student_updates = critic_updates = iteration = 0
    while student_updates < args.student_iters:
        x0, text, _ = problem.batch(args.batch, generator)
        if config.updates_student(iteration):
            noise = _student_noise(config, iteration, student_updates, x0, generator)
            loss, _ = student_loss(denoisers, config, x0, text, noise, iteration, student_updates)
            student_opt.zero_grad()
            loss.backward()
            student_opt.step()
            ema.update(student_net)
            student_updates += 1
        else:
            noise = IterationNoise(None, None, *_dmd_draws(config, critic_updates, x0, generator))
            loss, _ = critic_loss(denoisers, config, text, noise, critic_updates)
            fake_opt.zero_grad()
            loss.backward()
            fake_opt.step()
            critic_updates += 1
        iteration += 1
    ema.copy_to(student_net)
    return denoisers.student


def _student_noise(config, iteration, updates, x0, generator):
    """The draws of the terms that run at this student iteration, in the order they are used."""
    t_scm = eps = None
    if config.scm_weight > 0:
        t_scm = sample_time_scm(len(x0), config.p_mean, config.p_std, generator=generator).float()
        eps = torch.randn(x0.shape, generator=generator)
    if not config.uses_dmd(iteration):
        return IterationNoise(eps, t_scm, [], None, None)
    return IterationNoise(eps, t_scm, *_dmd_draws(config, updates, x0, generator))


def _dmd_draws(config, updates, x0, generator):
    """Rollout noises, t_D and the DMD noise."""
    steps = rollout_steps(updates, config.max_rollout_steps)
    rollout = [torch.randn(x0.shape, generator=generator) for _ in range(steps)]
    t_dmd = sample_time_dmd(len(x0), config.dmd_shift, generator=generator).float()
    return rollout, t_dmd, torch.randn(x0.shape, generator=generator)


@torch.no_grad()
def evaluate(problem, student, args, generator):
    """Energy distance to the target, averaged over classes, for student and teacher samplers."""
    labels = torch.arange(len(CLASS_MEANS)).repeat_interleave(args.eval_samples)
    text = problem.text(labels)
    noise = lambda: torch.randn(len(labels), 2, generator=generator)  # noqa: E731
    if problem.cfg_scale == 1.0:
        target = sample_data(labels, generator)
    else:
        target = sample_rf_euler(problem.guided_net, noise().double(), text.double(), 1000)
    samples = {f"student_{n}step": sample_few_step(student, noise(), text, n, generator=generator)
               for n in (1, 2, 4)}
    samples.update({f"teacher_euler_{n}step": sample_rf_euler(problem.guided_net, noise(), text, n)
                    for n in (1, 4, 50)})
    return {
        name: sum(energy_distance(x[labels == c].double(), target[labels == c].double())
                  for c in range(len(CLASS_MEANS))) / len(CLASS_MEANS)
        for name, x in samples.items()
    }


def build_parser():
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=["scm", "rcm", "dmd"], default="rcm",
                        help="the terms distilled: the sCM term, DMD with its critic, or both (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the run's random draws; the problem itself is fixed (default: %(default)s)")
    parser.add_argument("--cfg", type=cli.positive_float, default=1.0, help="teacher CFG scale (default: %(default)s)")
    parser.add_argument("--student-iters", type=cli.positive_int, default=3000,
                        help="student updates; the critic's come between them (default: %(default)s)")
    parser.add_argument("--pretrain-iters", type=cli.non_negative_int, default=3000,
                        help="steps regressing the MLP onto the teacher's velocity before distillation "
                             "(default: %(default)s)")
    parser.add_argument("--batch", type=cli.positive_int, default=512, help="samples per step (default: %(default)s)")
    parser.add_argument("--hidden", type=cli.positive_int, default=128,
                        help="width of the MLP's hidden layers (default: %(default)s)")
    parser.add_argument("--depth", type=cli.positive_int, default=3,
                        help="hidden layers of the MLP (default: %(default)s)")
    parser.add_argument("--lr", type=cli.positive_float, default=3e-4,
                        help="student learning rate (default: %(default)s)")
    parser.add_argument("--fake-lr", type=cli.positive_float, default=3e-4,
                        help="fake-score (critic) learning rate (default: %(default)s)")
    parser.add_argument("--student-update-freq", type=cli.positive_int, default=2,
                        help="one student iteration every N, critic iterations between (default: %(default)s)")
    parser.add_argument("--tangent-warmup", type=cli.non_negative_int, default=500,
                        help="iterations of the sCM tangent warm-up, sCM term only (default: %(default)s)")
    parser.add_argument("--scm-weight", type=cli.positive_float, default=100.0,
                        help="weight of the sCM term, where --method has it (default: %(default)s)")
    parser.add_argument("--dmd-weight", type=cli.positive_float, default=1.0,
                        help="weight of the DMD term, where --method has it (default: %(default)s)")
    parser.add_argument("--p-mean", type=float, default=0.0,
                        help="mean of the sCM term's log-normal time distribution (default: %(default)s)")
    parser.add_argument("--p-std", type=cli.positive_float, default=1.6,
                        help="spread of the sCM term's log-normal time distribution (default: %(default)s)")
    parser.add_argument("--dmd-shift", type=cli.positive_float, default=5.0,
                        help="RF time shift of the DMD term's times (default: %(default)s)")
    parser.add_argument("--eval-samples", type=cli.positive_int, default=2000,
                        help="evaluation samples per class (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a short run for tests (< 60 s)")
    return parser


def main():
    args = build_parser().parse_args()
    if args.quick:
        args.student_iters, args.pretrain_iters, args.tangent_warmup = 300, 600, 50
        args.batch, args.eval_samples = 256, 500
    torch.set_num_threads(1)  # tiny tensors: one thread is as fast, and seeds can run side by side
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    problem = Problem(args.cfg)
    student = distill(problem, args, generator)
    distances = evaluate(problem, student, args, generator)
    print(json.dumps({"method": args.method, "seed": args.seed, "cfg": args.cfg,
                      "student_iters": args.student_iters, "quick": args.quick,
                      "energy_distance": distances, "seconds": round(time.time() - start, 1)}))


if __name__ == "__main__":
    main()
