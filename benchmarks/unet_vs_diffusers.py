"""Our base U-Net against diffusers' UNet2DConditionModel at matched parameters and FLOPs, on one device.

The models are built in ``unet_models.py`` (diffusers widths matched to within 10% of our parameters
and FLOPs per image). Each model runs in its best mode here, measured at batch 8 among bf16
autocast / bf16 weights, channels-last, and for diffusers fused QKV projections (fp32 is 2-3x slower
for both on this CPU: see ``--ablation``). Timings interleave the models round by round and keep
each one's best round (other processes only ever slow a round down); ratios come from the same
run. The device's bf16 matmul rate is measured between rounds, and model FLOPs utilisation (MFU) is
a U-Net's FLOP/s over it. Memory: peak resident-set growth during one call (CPU), the CUDA
allocator's peak (GPU). ``measure.py`` holds the timing and memory helpers.

    .venv/bin/python benchmarks/unet_vs_diffusers.py [--quick] [--unet issue|shapes-base64] [--device cuda]
    .venv/bin/python benchmarks/unet_vs_diffusers.py --ablation     # each CPU optimisation on its own

Writes benchmarks/results/unet_vs_diffusers.json (``--ablation``: ..._ablation.json).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import RESULTS, machine, print_table, write_json  # noqa: E402
from measure import interleaved, peak_memory_mib, seconds  # noqa: E402
from unet_models import UNETS, Model, matched_diffusers, ours  # noqa: E402

from cascade.device import fast_dtype, tune_allocator  # noqa: E402
from stages.conditioning import Conditioning  # noqa: E402
from stages.unet import UNetConfig  # noqa: E402

FORWARD_MODES = ["bf16-autocast channels-last", "bf16-weights channels-last"]
DIFFUSERS_EXTRA = ["bf16-weights channels-last fused-qkv"]
TRAIN_MODES = ["bf16-autocast", "bf16-autocast channels-last", "bf16-weights channels-last"]


@dataclass(frozen=True)
class Where:
    """Where and how carefully to measure: the device, how long each round waits for a quiet
    machine, and how close diffusers' parameters and FLOPs must come to ours."""

    device: torch.device
    quiet_wait: float = 30.0
    tolerance: float = 0.10


def pick_modes(models: list[Model], batch: int, rounds: int, peak: list[float], where: Where) -> tuple[dict, list[list]]:
    """Each model's fastest forward and training mode at ``batch``."""
    chosen, rows = {}, []
    for kind, modes in (("forward", FORWARD_MODES), ("train", TRAIN_MODES)):
        runs = {}
        for m in models:
            extra = DIFFUSERS_EXTRA if (m.name == "diffusers" and kind == "forward") else []
            for mode in modes + extra:
                runs[(m.name, mode)] = m.forward(batch, mode) if kind == "forward" else m.training_step(batch, mode)
        times = interleaved(runs, rounds, peak, where.device, where.quiet_wait)
        for m in models:
            rates = {mode: batch / min(v) for (name, mode), v in times.items() if name == m.name}
            chosen[(m.name, kind)] = max(rates, key=rates.get)
            rows += [[m.name, kind, mode, f"{rate:.2f}"] for mode, rate in rates.items()]
        for m in models:
            m.release()
    return chosen, rows


def ablation(config: UNetConfig, batch: int, rounds: int) -> list[dict[str, Any]]:
    """Each way to a faster forward on its own, interleaved in one process (img/s, best round).
    The allocator goes last: tuning it cannot be undone in-process, so it is one before/after pair."""
    import stages.blocks as blocks
    import stages.group_norm as group_norm
    import stages.unet as unet
    from stages import native
    from stages.fused import unfused
    from stages.modulations import modulations
    from stages.upsample_conv import upsample_conv

    model = ours(config)
    variants = {mode: model.forward(batch, mode) for mode in
                ["fp32", "fp32 channels-last", "bf16-autocast", "bf16-autocast channels-last",
                 "bf16-weights", "bf16-weights channels-last"]}
    chosen = variants["bf16-weights channels-last"]
    variants["  ... under no_grad, not inference_mode"] = model.forward(batch, "bf16-weights channels-last", torch.no_grad)

    def without_kernels() -> None:
        with native.unused():
            chosen()

    def without_kernels_or_small_map_route() -> None:
        group_norm._SMALL_CHANNELS_LAST = 0
        try:
            without_kernels()
        finally:
            group_norm._SMALL_CHANNELS_LAST = 1024

    def without_fused_adds() -> None:
        with unfused():
            chosen()

    def without_upsampling_by_phases() -> None:  # the plain nearest upsampling and 3x3 convolution
        blocks.upsample_conv = lambda conv, x: conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        try:
            chosen()
        finally:
            blocks.upsample_conv = upsample_conv

    def without_stacked_modulations() -> None:  # each residual block's own scale-and-shift product
        unet.modulations = lambda *args: None
        try:
            chosen()
        finally:
            unet.modulations = modulations

    variants["  ... without our C kernels (GroupNorm, SiLU)"] = without_kernels
    variants["  ... without them or the small-map GroupNorm route"] = without_kernels_or_small_map_route
    variants["  ... without fused adds/concatenations (unfused(): nor the two below)"] = without_fused_adds
    variants["  ... without the upsampling as one low-res convolution"] = without_upsampling_by_phases
    variants["  ... without the stacked modulation product"] = without_stacked_modulations
    wide = ours(replace(config, attention_levels=(False,) + (True,) * (len(config.channel_mults) - 1)))
    variants["  ... with self-attention at 32 px too"] = wide.forward(batch, "bf16-weights channels-last")
    net = model.module_for("bf16-weights channels-last")
    x, t, tokens, pooled = model.inputs(batch // 2, torch.bfloat16, True)
    cond = Conditioning(text_tokens=tokens, text_mask=torch.ones(tokens.shape[:2], dtype=torch.bool), pooled=pooled)
    uncond = replace(cond, drop_text=torch.ones(batch // 2, dtype=torch.bool))

    def two_forwards() -> None:
        with torch.inference_mode():
            net(x, t, cond), net(x, t, uncond)

    def one_forward() -> None:
        with torch.inference_mode():
            net(torch.cat([x, x]), torch.cat([t, t]), cond.doubled_for_guidance())

    variants[f"guidance: two forwards of {batch // 2}"] = two_forwards
    variants[f"guidance: one forward of {batch} (doubled conditioning)"] = one_forward
    times = interleaved(variants, rounds, [])
    reference = batch / min(times["bf16-weights channels-last"])
    rows = [{"variant": k, "img_s": batch / min(v), "vs_chosen": batch / min(v) / reference} for k, v in times.items()]
    for label in ("glibc default allocator", "tune_allocator()"):
        if label != "glibc default allocator":
            tune_allocator()
        chosen()
        faults, best = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, min(seconds(chosen) for _ in range(rounds))
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / rounds
        rows.append({"variant": f"bf16-weights channels-last, {label}", "img_s": batch / best,
                     "vs_chosen": batch / best / reference, "page_faults_per_forward": faults})
    return rows


def compare(config: UNetConfig, batches: list[int], rounds: int, quick: bool, compiled: bool,
            where: Where) -> dict[str, Any]:
    mine = ours(config, where.device)
    counts = {"ours": mine.count()}
    theirs, counts["diffusers"] = matched_diffusers(config, counts["ours"], where.device, where.tolerance)
    models = [mine, theirs]
    print_table(["model", "params (M)", "GFLOP/img", "of which attention", "diffusers widths"],
                [[name, f"{c['params_m']:.2f}", f"{c['gflops']:.2f}", f"{c['attention_gflops']:.3f}",
                  c.get("block_out_channels", "")] for name, c in counts.items()])
    peak: list[float] = []
    if quick or fast_dtype(where.device) == torch.float32:
        bf16 = fast_dtype(where.device) == torch.bfloat16
        modes = {"forward": "bf16-weights channels-last" if bf16 else "fp32 channels-last",
                 "train": "bf16-autocast channels-last" if bf16 else "fp32 channels-last"}
        chosen, mode_rows = {(m.name, k): v for m in models for k, v in modes.items()}, []
    else:
        chosen, mode_rows = pick_modes(models, 8, max(2, rounds - 2), peak, where)
        print("\nmodes at batch 8 (samples/s, best round):")
        print_table(["model", "pass", "mode", "samples/s"], mode_rows)

    results = []
    for batch in batches:
        runs = {}
        for m in models:
            runs[(m.name, "forward")] = m.forward(batch, chosen[(m.name, "forward")])
            runs[(m.name, "train")] = m.training_step(batch, chosen[(m.name, "train")])
        times = interleaved(runs, rounds, peak, where.device, where.quiet_wait)
        memory = {key: peak_memory_mib(fn, where.device) for key, fn in runs.items()}
        for m in models:
            fwd, trn = times[(m.name, "forward")], times[(m.name, "train")]
            results.append({
                "model": m.name, "batch": batch, "forward_mode": chosen[(m.name, "forward")],
                "train_mode": chosen[(m.name, "train")], "forward_img_s": batch / min(fwd),
                "forward_img_s_median": batch / statistics.median(fwd), "train_samples_s": batch / min(trn),
                "train_samples_s_median": batch / statistics.median(trn),
                "forward_peak_mib": memory[(m.name, "forward")], "train_peak_mib": memory[(m.name, "train")],
            })
        results[-2]["ratio_vs_diffusers"] = {k: results[-2][k] / results[-1][k] for k in ("forward_img_s", "train_samples_s")}
        for m in models:
            m.release()
    if compiled:
        batch, mode = batches[-1], "bf16-weights channels-last compile"
        for m in models:
            start = time.perf_counter()
            runs = {m.name: m.forward(batch, mode)}
            runs[m.name]()
            print(f"compiled {m.name} at batch {batch} in {time.perf_counter() - start:.0f} s", flush=True)
            times = interleaved(runs, rounds, peak, where.device, where.quiet_wait)
            results.append({"model": m.name, "batch": batch, "forward_mode": mode, "forward_img_s": batch / min(times[m.name])})
            m.release()
    rate = max(peak)
    for r in results:
        r["forward_tflop_s"] = counts[r["model"]]["gflops"] * r["forward_img_s"] / 1e3
        r["mfu"] = r["forward_tflop_s"] * 1e12 / rate
    return {"counts": counts, "modes_at_batch_8": mode_rows, "matmul_tflop_s": rate / 1e12,
            "matmul_tflop_s_rounds": [p / 1e12 for p in peak], "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=(
        "--compile: torch.compile takes 60-100 s per model and input shape on this CPU; it pays for "
        "long batch jobs (many calls at one shape), not for one render."))
    parser.add_argument("--quick", action="store_true", help="batches 1 and 8, 3 rounds, no search for the best modes")
    parser.add_argument("--unet", choices=sorted(UNETS), default="issue", help="which of our base U-Nets")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per measurement (best one kept)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd forwards at the largest batch")
    parser.add_argument("--ablation", action="store_true", help="instead: each optimisation alone, at the largest batch")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (GPU runs: benchmarks/gpu_check.sh)")
    parser.add_argument("--dry", action="store_true",
                        help="a seconds-long check that the script runs (a small U-Net, batch 2, one round): measures nothing")
    parser.add_argument("--out", type=Path, default=RESULTS / "unet_vs_diffusers.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here")
    if args.dry:
        args.unet, args.quick, args.batches, args.rounds = "dry", True, args.batches or [2], args.rounds or 1
        where = Where(device, quiet_wait=0.0, tolerance=float("inf"))
    else:  # a GPU's rounds need no wait for a quiet CPU
        where = Where(device, quiet_wait=0.0 if device.type == "cuda" else 30.0)
    batches = args.batches or ([1, 8] if args.quick else [1, 8, 16])
    rounds = args.rounds or (3 if args.quick else 6)
    config = UNETS[args.unet]
    if args.ablation:
        if device.type != "cpu":
            raise SystemExit("--ablation measures this CPU's optimisations; run it without --device")
        rows = ablation(config, batches[-1], rounds)
        print_table(["variant", "img/s", "vs chosen", "page faults/forward"],
                    [[r["variant"], f"{r['img_s']:.1f}", f"{r['vs_chosen']:.2f}x", r.get("page_faults_per_forward", "")]
                     for r in rows])
        out = args.out.with_name(args.out.stem + "_ablation.json")
        write_json(out, {"unet": args.unet, "batch": batches[-1], "rounds": rounds, "machine": machine(), "results": rows})
        print(f"\nwrote {out}")
        return
    allocator = tune_allocator()
    report = compare(config, batches, rounds, args.quick, args.compile, where)
    print(f"\ndevice: {device}; fast dtype: {fast_dtype(device)}; glibc allocator tuned: {allocator}; "
          f"bf16 matmul rate (best square matmul, this run): {report['matmul_tflop_s']:.2f} TFLOP/s\n")
    rows = []
    for r in report["results"]:
        ratio = r.get("ratio_vs_diffusers")
        rows.append([r["model"], r["batch"], r["forward_mode"], f"{r['forward_img_s']:.1f}",
                     f"{r['train_samples_s']:.2f}" if "train_samples_s" in r else "-",
                     _mib(r.get("forward_peak_mib")), _mib(r.get("train_peak_mib")),
                     f"{r['forward_tflop_s']:.2f}", f"{100 * r['mfu']:.0f}%",
                     f"{ratio['forward_img_s']:.2f}x, {ratio['train_samples_s']:.2f}x" if ratio else ""])
    print_table(["model", "batch", "forward mode", "fwd img/s", "train samples/s", "fwd peak MiB",
                 "train peak MiB", "fwd TFLOP/s", "MFU", "ours/diffusers fwd, train"], rows)
    write_json(args.out, {"unet": args.unet, "unet_config": asdict(config), "allocator_tuned": allocator,
                          "rounds": rounds, "device": str(device), "dry": args.dry, "machine": machine(device), **report})
    print(f"\nwrote {args.out}")


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    main()
