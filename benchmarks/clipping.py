"""Cost of one DP-SGD gradient on the shared-conditioner flow: skdpflow vs Opacus vs naive.

Usage (from the repository root)::

    python benchmarks/clipping.py                                   # CPU, 2 threads
    python benchmarks/clipping.py --batches 1024 4096 --steps 20 --check --out clipping.md
    python benchmarks/clipping.py --device cuda --check             # adds the Triton rows

GPU session, one prepared script (kernel correctness on CUDA first, then timing)::

    pip install -e '.[test,gpu]'
    bash benchmarks/gpu_check.sh          # writes gpu_check/{env,tests,clipping}.txt

One process, one model (``SharedConditionerFlow(19, n_stages=6, hidden_size=64, n_bins=8)``:
Adult-sized, 19 encoded dimensions, the conditioner called once per stage), one batch per
batch size, the same rows for every method. Every method does the work of one gradient step
short of the parameter update:

* non-private: forward, backward of the mean loss into ``p.grad``;
* skdpflow: forward inside :meth:`DPSGDStep.record`, then :meth:`DPSGDStep.step` (one
  backward, norms, clipping, noise, ``p.grad``), for each clipping mode the installed
  :class:`DPSGDStep` offers; on CUDA also with the fused Triton kernels;
* Opacus hooks: ``GradSampleModule`` + ``DPOptimizer``: forward, backward (per-sample
  gradients), ``optimizer.pre_step()`` (clip, sum, noise, scale);
* Opacus fast gradient clipping without ghost norms (``GradSampleModuleFastGradientClipping(
  use_ghost_clipping=False)`` + ``DPLossFastGradientClipping``; two backward passes) and with
  ghost norms, which refuses a ``Linear`` called several times per forward pass;
* a naive loop, one backward per row, timed on a few rows and scaled to the batch.

Methods are timed interleaved (one step of each in turn, rotating the order) after a
warm-up, and the table gives medians; ratios are to the non-private step's median. The
fastest step is shown too: on a shared machine, other processes competing for the cores
make multi-threaded steps stall (thread-pool barriers wait for a descheduled thread), and a
large gap between median and fastest step flags such a run.
``--check`` first verifies that skdpflow's per-row gradient norms and clipped mean
gradient agree with Opacus hooks (and the norms with the naive loop) to 1e-4 relative.
``--breakdown`` adds the median time of each phase of the flat DP step, timed alternately
with the non-private step's forward and backward.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from skdpflow.flows.model import SharedConditionerFlow
from skdpflow.privacy.backends import (
    linear_clipped_sum_fused,
    linear_sq_norms_fused,
    triton_available,
)
from skdpflow.privacy.dpsgd import DPSGDStep
from skdpflow.privacy.norms import linear_clipped_sum, linear_sq_norms

FEATURES = 19
C = 1.0
SIGMA = 1.0

Step = Callable[[], None]


# ---------------------------------------------------------------------------- model, data
def make_model(device: torch.device, dtype: torch.dtype) -> SharedConditionerFlow:
    """The flow with every weight perturbed (the zero output layer would zero most norms)."""
    model = SharedConditionerFlow(FEATURES, n_stages=6, hidden_size=64, n_bins=8, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.to(device=device, dtype=dtype)


def make_batch(batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    generator = torch.Generator().manual_seed(batch)
    return torch.randn(batch, FEATURES, generator=generator).to(device=device, dtype=dtype)


class NLL(nn.Module):
    """Per-row negative log-likelihood criterion with the ``reduction`` Opacus toggles."""

    def __init__(self) -> None:
        super().__init__()
        self.reduction = "mean"

    def forward(self, log_prob: Tensor, target: Tensor | None = None) -> Tensor:
        loss = -log_prob
        return loss if self.reduction == "none" else loss.mean()


# ---------------------------------------------------------------------------- methods
def non_private(model: nn.Module, x: Tensor) -> Step:
    def step() -> None:
        for p in model.parameters():
            p.grad = None
        (-model(x)).mean().backward()

    return step


def skdpflow_step(model: nn.Module, x: Tensor, **options) -> Step:
    generator = torch.Generator(device=x.device).manual_seed(0)
    if options.get("noise") == "torch":
        options["noise"] = TorchNormalNoise(x.device)
    dp = DPSGDStep(model, max_grad_norm=C, noise_multiplier=SIGMA,
                   expected_batch_size=x.shape[0], generator=generator, **options)

    def step() -> None:
        with dp.record():
            losses = -model(x)
        dp.step(losses)

    return step


class TorchNormalNoise:
    """torch.normal from a seeded generator: the insecure noise of earlier versions, timed
    next to the secret source to show what secrecy costs. Never used for a real fit."""

    def __init__(self, device: torch.device) -> None:
        self.generator = torch.Generator(device=device).manual_seed(0)

    def normal(self, shape, std, *, device=None, dtype=torch.float64):  # noqa: ANN001, ANN201
        return torch.normal(0.0, std, size=shape, generator=self.generator, device=device,
                            dtype=torch.float32).to(dtype)


def skdpflow_variants() -> list[tuple[str, dict]]:
    """The clipping modes the installed DPSGDStep accepts (detected from its signature)."""
    params = inspect.signature(DPSGDStep).parameters
    variants = [("skdpflow DPSGDStep, flat (secret noise: AES-CTR, 4 normals summed)", {})]
    if "noise" in params:
        variants.append(("skdpflow DPSGDStep, flat, insecure torch.normal noise (reference)",
                         {"noise": "torch"}))
    if "clipping" in params:
        variants.append(("skdpflow DPSGDStep, per-unit", {"clipping": "per_unit"}))
    if "sparsity" in params:
        variants.append(("skdpflow DPSGDStep, flat, sparsity 0.5", {"sparsity": 0.5}))
        if "clipping" in params:
            variants.append(("skdpflow DPSGDStep, per-unit, sparsity 0.5",
                             {"clipping": "per_unit", "sparsity": 0.5}))
    return variants


def opacus_hooks(model: nn.Module, x: Tensor) -> Step:
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    gsm = GradSampleModule(model, loss_reduction="mean")
    optimizer = DPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=0.0), noise_multiplier=SIGMA, max_grad_norm=C,
        expected_batch_size=x.shape[0], loss_reduction="mean",
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        (-gsm(x)).mean().backward()
        optimizer.pre_step()

    return step


def opacus_fast_clipping(model: nn.Module, x: Tensor, ghost: bool) -> Step:
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizerFastGradientClipping
    from opacus.utils.fast_gradient_clipping_utils import DPLossFastGradientClipping

    gsm = GradSampleModuleFastGradientClipping(
        model, max_grad_norm=C, use_ghost_clipping=ghost, loss_reduction="mean"
    )
    optimizer = DPOptimizerFastGradientClipping(
        torch.optim.SGD(gsm.parameters(), lr=0.0), noise_multiplier=SIGMA, max_grad_norm=C,
        expected_batch_size=x.shape[0], loss_reduction="mean",
    )
    criterion = DPLossFastGradientClipping(gsm, optimizer, NLL(), loss_reduction="mean")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        criterion(gsm(x), None).backward()
        optimizer.pre_step()

    return step


def naive_rows(model: nn.Module, x: Tensor, rows: int) -> Step:
    """One backward per row for the first ``rows`` rows: clip, sum, add noise."""
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        threads = torch.get_num_threads()
        # One thread: faster for one-row tensors (no thread-pool barriers on tiny ops).
        torch.set_num_threads(1)
        try:
            rows_loop()
        finally:
            torch.set_num_threads(threads)

    def rows_loop() -> None:
        summed = [torch.zeros_like(p) for p in params]
        for i in range(rows):
            grads = torch.autograd.grad(-model(x[i : i + 1]).sum(), params)
            norm = torch.sqrt(sum(g.square().sum() for g in grads))
            coef = (C / (norm + 1e-6)).clamp(max=1.0)
            for s, g in zip(summed, grads, strict=True):
                s.add_(g, alpha=float(coef))
        for p, s in zip(params, summed, strict=True):
            p.grad = (s + SIGMA * C * torch.randn_like(s)) / x.shape[0]

    return step


# ---------------------------------------------------------------------------- check
def per_row_norms_naive(model: nn.Module, x: Tensor) -> Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(-model(x[i : i + 1]).sum(), params)
        out.append(torch.sqrt(sum(g.double().square().sum() for g in grads)))
    return torch.stack(out)


def check(model: nn.Module, x: Tensor, naive_count: int, triton: bool = False,
          tol: float = 1e-4) -> list[str]:
    """skdpflow vs Opacus hooks: per-row norms and the noiseless clipped mean gradient.

    With ``triton``, also DPSGDStep through the Triton kernels vs the torch functions.
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    lines = []
    batch = x.shape[0]
    ours = copy.deepcopy(model)
    dp = DPSGDStep(ours, max_grad_norm=C, noise_multiplier=0.0, expected_batch_size=batch)
    with dp.record():
        losses = -ours(x)
    sq = dp.per_sample_sq_norms(losses)
    norms = torch.sqrt(sum(v.double() for v in sq.values()))

    theirs = copy.deepcopy(model)
    gsm = GradSampleModule(theirs, loss_reduction="mean")
    optimizer = DPOptimizer(
        torch.optim.SGD(gsm.parameters(), lr=0.0), noise_multiplier=0.0, max_grad_norm=C,
        expected_batch_size=batch, loss_reduction="mean",
    )
    optimizer.zero_grad(set_to_none=True)
    (-gsm(x)).mean().backward()
    opacus_norms = torch.sqrt(sum(
        p.grad_sample.double().reshape(batch, -1).square().sum(1)
        for p in gsm.parameters() if p.requires_grad
    ))
    rel = float(((norms - opacus_norms).abs() / opacus_norms.clamp_min(1e-12)).max())
    lines.append(f"per-row norms, skdpflow vs Opacus hooks: max relative difference {rel:.2e}")
    ok = rel <= tol

    naive = per_row_norms_naive(copy.deepcopy(model), x[:naive_count])
    rel = float(((norms[:naive_count] - naive).abs() / naive.clamp_min(1e-12)).max())
    lines.append(f"per-row norms, skdpflow vs naive loop ({naive_count} rows): {rel:.2e}")
    ok = ok and rel <= tol

    optimizer.pre_step()
    dp.clear()
    with dp.record():
        losses = -ours(x)
    dp.step(losses)
    named = dict(gsm.named_parameters())
    worst = 0.0
    for name, p in ours.named_parameters():
        other = named.get(name, named.get(f"_module.{name}"))
        scale = float(other.grad.abs().max().clamp_min(1e-12))
        worst = max(worst, float((p.grad - other.grad).abs().max()) / scale)
    lines.append(f"clipped mean gradient (no noise), skdpflow vs Opacus hooks: {worst:.2e}")
    ok = ok and worst <= tol
    if triton:
        fused = copy.deepcopy(model)
        dp_fused = DPSGDStep(fused, max_grad_norm=C, noise_multiplier=0.0,
                             expected_batch_size=batch, backend="triton")
        with dp_fused.record():
            losses = -fused(x)
        fused_norms = dp_fused.step(losses)["norms"]
        rel = float(((fused_norms.double() - norms).abs() / norms.clamp_min(1e-12)).max())
        worst = max(
            float((p.grad - q.grad).abs().max() / q.grad.abs().max().clamp_min(1e-12))
            for p, q in zip(fused.parameters(), ours.parameters(), strict=True)
        )
        lines.append(f"DPSGDStep with Triton kernels vs torch: norms {rel:.2e}, "
                     f"clipped mean gradient {worst:.2e}")
        ok = ok and rel <= tol and worst <= tol
    norm_med = float(norms.median())
    lines.append(f"median per-row norm {norm_med:.3g} (C = {C}): "
                 f"{float((norms > C).double().mean()):.0%} of rows clipped")
    if not ok:
        raise SystemExit("check FAILED:\n" + "\n".join(lines))
    return lines


# ---------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_methods(
    steps: dict[str, Step], n_steps: int, warmup: int, device: torch.device,
    naive_steps: int,
) -> dict[str, list[float]]:
    """Interleaved timings (seconds) of each method; the order rotates every round."""
    names = list(steps)
    for name in names:
        for _ in range(warmup if name != "naive" else 1):
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(n_steps):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if name == "naive" and len(times[name]) >= naive_steps:
                continue
            sync(device)
            start = time.perf_counter()
            steps[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def noise_draw_ms(model: nn.Module, device: torch.device, n_steps: int) -> tuple[float, float]:
    """Median ms to draw one step's noise for every parameter: secret source vs torch.normal."""
    from skdpflow.privacy.randomness import SecureNoise

    secret, reference = SecureNoise(), TorchNormalNoise(device)
    shapes = [tuple(p.shape) for p in model.parameters()]
    times: dict[str, list[float]] = {"secret": [], "torch": []}
    for _ in range(max(n_steps, 5) + 1):
        for name, source in (("secret", secret), ("torch", reference)):
            sync(device)
            start = time.perf_counter()
            for shape in shapes:
                source.normal(shape, 1.0, device=device, dtype=torch.float32)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return (statistics.median(times["secret"][1:]) * 1e3,
            statistics.median(times["torch"][1:]) * 1e3)


def breakdown(model: nn.Module, x: Tensor, n_steps: int, device: torch.device) -> str:
    """Median ms of each phase of the flat DP step, next to the non-private step's two phases.

    Uses DPSGDStep's internals (the phases of :meth:`DPSGDStep.step`), so it times the same
    code; the two steps alternate, so load hits both alike.
    """
    private, plain = copy.deepcopy(model), copy.deepcopy(model)
    dp = DPSGDStep(private, max_grad_norm=C, noise_multiplier=SIGMA, expected_batch_size=len(x),
                   generator=torch.Generator(device=x.device).manual_seed(0), backend="torch")
    phases: dict[str, list[float]] = {}

    def lap(name: str, start: float) -> float:
        sync(device)
        now = time.perf_counter()
        phases.setdefault(name, []).append(now - start)
        return now

    for i in range(n_steps + 1):
        sync(device)
        start = time.perf_counter()
        for p in plain.parameters():
            p.grad = None
        loss = (-plain(x)).mean()
        start = lap("non-private forward", start)
        loss.backward()
        start = lap("non-private backward", start)
        with dp.record():
            losses = -private(x)
        start = lap("DP forward (recording)", start)
        records = dp._recorder.backward(losses)
        start = lap("DP backward to layer outputs + copy into scratch", start)
        coef, _, _ = dp._flat_coefficients(records, losses)
        start = lap("DP per-row norms + clip coefficients", start)
        summed = dp._clipped_sums(records, coef)
        start = lap("DP clipped sums", start)
        dp._noise_and_normalise(summed, None)
        lap("DP noise + p.grad", start)
        if i == 0:  # warm-up
            phases.clear()
    return ", ".join(f"{name} {statistics.median(t) * 1e3:.1f}" for name, t in phases.items())


def kernel_table(model: nn.Module, x: Tensor, n_steps: int, device: torch.device) -> list[str]:
    """Per-layer norm + clipped sum, torch functions vs the Triton kernels (CUDA only)."""
    dp = DPSGDStep(model, max_grad_norm=C, noise_multiplier=0.0, expected_batch_size=len(x))
    with dp.record():
        losses = -model(x)
    records = dp._recorder.backward(losses)  # (h, d) per layer, as DPSGDStep.step sees them
    coef = torch.rand(len(x), device=device, dtype=x.dtype)
    rows = []
    for record in records.values():
        h, d = record.inputs, record.grads

        def torch_fn(h=h, d=d):
            linear_sq_norms(h, d, True)
            linear_clipped_sum(h, d, coef)

        def triton_fn(h=h, d=d):
            linear_sq_norms_fused(h, d, True, backend="triton")
            linear_clipped_sum_fused(h, d, coef, backend="triton")

        times = time_methods({"torch": torch_fn, "triton": triton_fn}, n_steps, 3, device, 0)
        t_torch = statistics.median(times["torch"]) * 1e3
        t_triton = statistics.median(times["triton"]) * 1e3
        shape = f"{tuple(h.shape)} -> {d.shape[-1]}"
        rows.append(f"| {shape} | {t_torch:.3f} | {t_triton:.3f} | {t_torch / t_triton:.2f} |")
    return rows


def run_batch(args: argparse.Namespace, batch: int, device: torch.device,
              dtype: torch.dtype) -> tuple[list[str], list[str]]:
    base = make_model(device, dtype)
    x = make_batch(batch, device, dtype)
    notes: list[str] = []
    use_triton = use_triton_rows(args.triton, device)
    if args.check:
        lines = check(base, x, args.naive_rows, triton=use_triton)
        notes += [f"B={batch}: {line}" for line in lines]

    steps: dict[str, Step] = {"non-private": non_private(copy.deepcopy(base), x)}
    for label, options in skdpflow_variants():
        steps[label] = skdpflow_step(copy.deepcopy(base), x, backend="torch", **options)
        if use_triton:
            steps[label + " + Triton kernels"] = skdpflow_step(
                copy.deepcopy(base), x, backend="triton", **options
            )
    failed: dict[str, str] = {}
    candidates = {
        "Opacus GradSampleModule (hooks)": lambda m: opacus_hooks(m, x),
        "Opacus fast gradient clipping, no ghost": lambda m: opacus_fast_clipping(m, x, False),
        "Opacus ghost clipping": lambda m: opacus_fast_clipping(m, x, True),
    }
    for label, build in candidates.items():
        try:
            step = build(copy.deepcopy(base))
            step()  # a method that cannot run on this model fails here
            steps[label] = step
        except Exception as err:  # noqa: BLE001 - reported in the table
            failed[label] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
    naive_count = min(args.naive_rows, batch)
    steps["naive"] = naive_rows(copy.deepcopy(base), x, naive_count)

    times = time_methods(steps, args.steps, args.warmup, device, naive_steps=3)
    scale = {"naive": batch / naive_count}
    medians = {name: statistics.median(t) * scale.get(name, 1.0) for name, t in times.items()}
    reference = medians["non-private"]
    rows = []
    for name, median in medians.items():
        label = (f"naive per-row loop, 1 thread (timed on {naive_count} rows x "
                 f"{len(times[name])}, scaled x{batch / naive_count:g})"
                 if name == "naive" else name)
        best = min(times[name]) * scale.get(name, 1.0)
        rows.append(f"| {batch} | {label} | {median * 1e3:.1f} | {median / reference:.2f} "
                    f"| {best * 1e3:.1f} |")
    for label, why in failed.items():
        rows.append(f"| {batch} | {label} | does not run: {why} | - | - |")
    # Each round times every method once, back to back: the median over rounds of a
    # method's time over the same round's non-private time cancels slow swings in load.
    paired = {
        name: statistics.median(a / b for a, b in zip(t, times["non-private"], strict=False))
        for name, t in times.items() if name.startswith("skdpflow")
    }
    notes.append(f"B={batch}: paired ratio to non-private (median over rounds): "
                 + ", ".join(f"{name.removeprefix('skdpflow DPSGDStep, ')} {ratio:.2f}"
                             for name, ratio in paired.items()))
    flat = next((m for name, m in medians.items()
                 if name.startswith("skdpflow DPSGDStep, flat (secret")), None)
    insecure = next((m for name, m in paired.items() if "insecure" in name), None)
    secret = next((m for name, m in paired.items() if "secret" in name), None)
    draw_secret, draw_torch = noise_draw_ms(base, device, args.steps)
    if flat:
        notes.append(f"B={batch}: drawing one step's noise for all {n_params(base)} parameters: "
                     f"secret {draw_secret:.2f} ms, torch.normal {draw_torch:.2f} ms; the secret "
                     f"draw is {draw_secret / (flat * 1e3):.1%} of the flat DP step")
    if insecure and secret:
        notes.append(f"B={batch}: secret noise costs {secret / insecure:.3f}x the step with "
                     f"torch.normal noise (paired ratios {secret:.2f} / {insecure:.2f})")
    hooks = medians.get("Opacus GradSampleModule (hooks)")
    if flat and hooks:
        notes.append(f"B={batch}: skdpflow flat is {hooks / flat:.1f}x faster than Opacus hooks, "
                     f"{flat / reference:.2f}x the non-private step")
    if args.breakdown:
        notes.append(f"B={batch}: median ms per phase: "
                     + breakdown(base, x, args.steps, device))
    if use_triton:
        kernel_rows = kernel_table(copy.deepcopy(base), x, args.steps, device)
        notes.append(f"B={batch}: per-layer norm + clipped sum, median ms "
                     "(torch | Triton | speed-up):")
        notes += ["| layer (B, T, in) -> out | torch ms | Triton ms | speed-up |",
                  "|---|---|---|---|"] + kernel_rows
    return rows, notes


def use_triton_rows(choice: str, device: torch.device) -> bool:
    """Whether to add the Triton rows: ``auto`` = on CUDA with Triton installed."""
    if choice == "off":
        return False
    if choice == "on":
        if not triton_available(device):
            raise SystemExit("--triton on, but the kernels cannot run here (needs triton, and "
                             "CUDA or TRITON_INTERPRET=1).")
        return True
    return device.type == "cuda" and triton_available(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--naive-rows", type=int, default=16,
                        help="rows the naive loop is timed on (scaled to the batch)")
    parser.add_argument("--check", action="store_true",
                        help="first verify skdpflow's norms against Opacus hooks and naive")
    parser.add_argument("--triton", default="auto", choices=["auto", "on", "off"],
                        help="rows with the fused Triton kernels (auto: on CUDA when installed; "
                        "on: also on CPU under TRITON_INTERPRET=1, very slow, for testing)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time each phase of the flat DP step (after the table)")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available.")
    dtype = getattr(torch, args.dtype)

    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"{platform.processor() or platform.machine()}, {args.threads} threads")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    kernels = "yes" if use_triton_rows(args.triton, device) else "no"
    header = [
        (f"# DP-SGD step cost on SharedConditionerFlow({FEATURES}, n_stages=6, "
         "hidden_size=64, n_bins=8)"),
        "",
        (f"device: {args.device} ({hardware}); torch {torch.__version__}; {args.dtype}; "
         f"{args.steps} interleaved steps after {args.warmup} warm-up; load average at start "
         f"{load:.2f}; Triton kernels: {kernels}"),
        "",
        "| batch | method | median ms/step | ratio to non-private | fastest ms/step |",
        "|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    rows: list[str] = []
    notes: list[str] = []
    started = time.perf_counter()
    for batch in args.batches:
        batch_rows, batch_notes = run_batch(args, batch, device, dtype)
        print("\n".join(batch_rows), flush=True)
        rows += batch_rows
        notes += batch_notes
    footer = ["", *notes, "", f"total time {time.perf_counter() - started:.0f} s"]
    print("\n".join(footer))
    if args.out:
        args.out.write_text("\n".join(header + rows + footer) + "\n")


if __name__ == "__main__":
    main()
