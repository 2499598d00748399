"""Our base U-Net against diffusers' UNet2DConditionModel at matched parameters and FLOPs, on this CPU.

The diffusers model has our layout (blocks per level, attention levels, head width, text width)
and block widths picked from a short list to come within 10% of our parameter count and FLOPs per
image, both counted here: ``torch.utils.flop_counter`` for matmuls and convolutions, plus
4 * N * heads * Lq * Lk * d for each ``scaled_dot_product_attention`` call, which the counter misses
on the CPU. Same inputs (64 px images, 32 text tokens, a pooled text vector: diffusers'
``class_embed_type="projection"``). Each model runs in its best mode here, measured at batch 8 among
bf16 autocast / bf16 weights, channels-last, and for diffusers fused QKV projections (fp32 is 2-3x
slower for both: see ``--ablation``). Timings interleave the models round by round and keep each
one's best round (other processes only ever slow a round down); ratios come from the same run. The
machine's bf16 matmul rate is measured between rounds, and model FLOPs utilisation (MFU) is a
U-Net's FLOP/s over it. Memory: peak resident-set growth during one call.

    .venv/bin/python benchmarks/unet_vs_diffusers.py [--quick] [--unet issue|shapes-base64]
    .venv/bin/python benchmarks/unet_vs_diffusers.py --ablation     # each optimisation on its own

Writes benchmarks/results/unet_vs_diffusers.json (``--ablation``: ..._ablation.json).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import RESULTS, machine, print_table, write_json  # noqa: E402

from cascade.device import fast_dtype, prepare_for_inference, tune_allocator  # noqa: E402
from stages.conditioning import Conditioning  # noqa: E402
from stages.unet import UNet, UNetConfig  # noqa: E402

RESOLUTION, TOKENS = 64, 32
UNETS: dict[str, UNetConfig] = {
    # The representative base U-Net of the issue.
    "issue": UNetConfig(base_channels=64, channel_mults=(1, 2, 3, 4), res_blocks=(2, 2, 2, 2),
                        attention_levels=(False, False, True, True), head_dim=32, text_dim=256,
                        pooled_dim=256, context_dim=256),
    # The proposed shapes-world base preset (the world CLIP's text: 192-d tokens and pooled vector).
    "shapes-base64": UNetConfig(base_channels=64, channel_mults=(1, 2, 3, 4), res_blocks=(1, 2, 2, 2),
                                attention_levels=(False, False, True, True), head_dim=64, text_dim=192,
                                pooled_dim=192, context_dim=192),
}
DIFFUSERS_WIDTHS = [(64, 128, 160, 224), (64, 128, 192, 192), (64, 128, 192, 224), (64, 128, 160, 192),
                    (64, 128, 128, 256), (64, 128, 160, 256), (64, 128, 192, 256), (64, 96, 192, 256),
                    (64, 128, 128, 192), (64, 96, 160, 224)]
FORWARD_MODES = ["bf16-autocast channels-last", "bf16-weights channels-last"]
DIFFUSERS_EXTRA = ["bf16-weights channels-last fused-qkv"]
TRAIN_MODES = ["bf16-autocast", "bf16-autocast channels-last"]


class AttentionFlops(TorchFunctionMode):
    """Adds 4 * batch * heads * Lq * Lk * d per scaled_dot_product_attention call (QK^T and PV)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.flops += 4 * args[0].numel() * args[1].shape[-2]
        return func(*args, **(kwargs or {}))


class Model:
    """A U-Net and how to call it; prepared copies per mode; forward and training-step closures."""

    def __init__(self, name: str, net: nn.Module, call: Callable[..., torch.Tensor], text_dim: int) -> None:
        self.name, self.net, self.call, self.text_dim = name, net, call, text_dim
        self.prepared: dict[str, Any] = {}

    def release(self) -> None:
        """Drop the prepared copies (each holds weights, and for training the optimizer state)."""
        self.prepared.clear()
        gc.collect()

    def inputs(self, batch: int, dtype: torch.dtype = torch.float32, channels_last: bool = False) -> tuple:
        g = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, 3, RESOLUTION, RESOLUTION, generator=g).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        t = torch.rand(batch, generator=g) * 999
        tokens = torch.randn(batch, TOKENS, self.text_dim, generator=g).to(dtype)
        return x, t, tokens, torch.randn(batch, self.text_dim, generator=g).to(dtype)

    def count(self) -> dict[str, float]:
        """Parameters (M) and GFLOPs of one image."""
        with torch.no_grad(), FlopCounterMode(display=False) as counter, AttentionFlops() as attention:
            self.call(self.net, *self.inputs(1))
        return {"params_m": sum(p.numel() for p in self.net.parameters()) / 1e6,
                "gflops": (counter.get_total_flops() + attention.flops) / 1e9, "attention_gflops": attention.flops / 1e9}

    def module_for(self, mode: str) -> nn.Module:
        if mode not in self.prepared:
            net = copy.deepcopy(self.net).eval().requires_grad_(False)
            if "fused" in mode:
                net.fuse_qkv_projections()
            dtype = torch.bfloat16 if "bf16-weights" in mode else torch.float32
            self.prepared[mode] = prepare_for_inference(net, dtype=dtype, channels_last="channels-last" in mode,
                                                        compile="compile" in mode)
        return self.prepared[mode]

    def forward(self, batch: int, mode: str, grad_mode: Callable = torch.inference_mode) -> Callable[[], None]:
        net = self.module_for(mode)
        x, t, tokens, pooled = self.inputs(batch, torch.bfloat16 if "bf16-weights" in mode else torch.float32,
                                           "channels-last" in mode)

        def run() -> None:
            with grad_mode(), _cast(mode):
                self.call(net, x, t, tokens, pooled)

        return run

    def training_step(self, batch: int, mode: str) -> Callable[[], None]:
        """Forward, MSE loss, backward and a fused AdamW step (fp32 master weights)."""
        key = "train " + mode
        if key not in self.prepared:
            net = copy.deepcopy(self.net).train()
            net = net.to(memory_format=torch.channels_last) if "channels-last" in mode else net
            self.prepared[key] = (net, torch.optim.AdamW(net.parameters(), lr=1e-5, fused=True))
        net, optimizer = self.prepared[key]
        x, t, tokens, pooled = self.inputs(batch, torch.float32, "channels-last" in mode)
        target = torch.randn_like(x)

        def run() -> None:
            with _cast(mode):
                out = self.call(net, x, t, tokens, pooled)
            F.mse_loss(out.float(), target).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return run


def _cast(mode: str) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", torch.bfloat16) if "autocast" in mode else contextlib.nullcontext()


def ours(config: UNetConfig) -> Model:
    def call(net, x, t, tokens, pooled):
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool)
        return net(x, t, Conditioning(text_tokens=tokens, text_mask=mask, pooled=pooled))

    torch.manual_seed(0)
    return Model("ours", UNet(config), call, config.text_dim)


def diffusers_unet(widths: tuple[int, ...], config: UNetConfig) -> Model:
    from diffusers import UNet2DConditionModel

    def heads(width: int) -> int:  # diffusers' "attention_head_dim" is the number of heads
        n = max(1, round(width / config.head_dim))
        while width % n:
            n -= 1
        return n

    torch.manual_seed(0)
    attention = config.attention_levels
    net = UNet2DConditionModel(
        sample_size=RESOLUTION, in_channels=3, out_channels=3, block_out_channels=widths,
        layers_per_block=tuple(config.res_blocks),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        cross_attention_dim=config.context_dim, encoder_hid_dim=config.text_dim,
        attention_head_dim=tuple(heads(w) for w in widths),
        class_embed_type="projection", projection_class_embeddings_input_dim=config.pooled_dim,
    )

    def call(net, x, t, tokens, pooled):
        return net(x, t, tokens, class_labels=pooled, return_dict=False)[0]

    return Model("diffusers", net, call, config.text_dim)


def matched_diffusers(config: UNetConfig, reference: dict[str, float]) -> tuple[Model, dict[str, Any]]:
    """The first candidate widths within 5% of ``reference`` in parameters and FLOPs, else the closest."""
    best = None
    for widths in DIFFUSERS_WIDTHS:
        model = diffusers_unet(widths, config)
        counts = model.count()
        error = max(abs(counts[k] / reference[k] - 1) for k in ("params_m", "gflops"))
        if best is None or error < best[0]:
            best = (error, model, {**counts, "block_out_channels": list(widths)})
        if error < 0.05:
            break
    if best[0] > 0.10:
        raise SystemExit(f"no diffusers widths within 10% of ours (closest: {best[2]})")
    return best[1], best[2]


# ------------------------------------------------------------------------------ measuring

_libc = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None


def _status_kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def peak_memory_mib(fn: Callable[[], None]) -> float | None:
    """Peak resident-set growth (MiB) during ``fn()``: free heap handed back to the kernel, the
    high-water mark reset, then VmHWM - VmRSS before. None where /proc does not allow it."""
    gc.collect()
    if _libc is not None:
        _libc.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - before) / 1024
    except (OSError, StopIteration):
        return None


def seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_rate(sizes: tuple[int, ...] = (2048, 4096)) -> float:
    """The best bf16 matmul rate (FLOP/s) over square sizes, one try each."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
        a @ b
        best = max(best, 2 * n**3 / seconds(lambda: a @ b))
    return best


def _jiffies() -> tuple[int, int]:
    """CPU time used so far (clock ticks) by the whole machine and by this process."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    mine = os.times()
    return sum(values) - values[3] - values[4], round((mine.user + mine.system) * os.sysconf("SC_CLK_TCK"))


def others_share(fn: Callable[[], None]) -> float:
    """Run ``fn``; the share of the machine's CPUs that other processes used meanwhile (0 to 1)."""
    (busy0, mine0), start = _jiffies(), time.perf_counter()
    fn()
    (busy1, mine1), wall = _jiffies(), time.perf_counter() - start
    return max(0.0, (busy1 - busy0) - (mine1 - mine0)) / (wall * os.sysconf("SC_CLK_TCK") * (os.cpu_count() or 1))


def wait_until_quiet(limit: float = 30.0, busy: float = 0.1) -> None:
    """Sleep (up to ``limit`` s) until other processes use under ``busy`` of the CPUs for half a second."""
    end = time.perf_counter() + limit
    while time.perf_counter() < end and others_share(lambda: time.sleep(0.5)) > busy:
        pass


def interleaved(runs: dict[Any, Callable[[], None]], rounds: int, peak: list[float]) -> dict[Any, list[float]]:
    """Each run once per round in turn (after a warm-up each), the matmul rate before every round.

    This machine is shared: each round waits for a quiet moment, and a run during which other
    processes used over 10% of the CPUs is dropped (unless every round of that run was busy).
    """
    for fn in runs.values():
        fn()
    times: dict[Any, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(rounds):
        wait_until_quiet()
        peak.append(matmul_rate())
        for name, fn in runs.items():
            start = time.perf_counter()
            share = others_share(fn)
            times[name].append((time.perf_counter() - start, share))
    quiet = {name: [t for t, share in v if share <= 0.1] or [t for t, _ in v] for name, v in times.items()}
    return quiet


def pick_modes(models: list[Model], batch: int, rounds: int, peak: list[float]) -> tuple[dict, list[list]]:
    """Each model's fastest forward and training mode at ``batch``."""
    chosen, rows = {}, []
    for kind, modes in (("forward", FORWARD_MODES), ("train", TRAIN_MODES)):
        runs = {}
        for m in models:
            extra = DIFFUSERS_EXTRA if (m.name == "diffusers" and kind == "forward") else []
            for mode in modes + extra:
                runs[(m.name, mode)] = m.forward(batch, mode) if kind == "forward" else m.training_step(batch, mode)
        times = interleaved(runs, rounds, peak)
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

    model = ours(config)
    variants = {mode: model.forward(batch, mode) for mode in
                ["fp32", "fp32 channels-last", "bf16-autocast", "bf16-autocast channels-last",
                 "bf16-weights", "bf16-weights channels-last"]}
    chosen = variants["bf16-weights channels-last"]
    variants["  ... under no_grad, not inference_mode"] = model.forward(batch, "bf16-weights channels-last", torch.no_grad)

    def without_small_map_fix() -> None:
        blocks._SMALL_CHANNELS_LAST = 0
        chosen()
        blocks._SMALL_CHANNELS_LAST = 1024

    variants["  ... without the small-map GroupNorm route"] = without_small_map_fix
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


def compare(config: UNetConfig, batches: list[int], rounds: int, quick: bool, compiled: bool) -> dict[str, Any]:
    mine = ours(config)
    counts = {"ours": mine.count()}
    theirs, counts["diffusers"] = matched_diffusers(config, counts["ours"])
    models = [mine, theirs]
    print_table(["model", "params (M)", "GFLOP/img", "of which attention", "diffusers widths"],
                [[name, f"{c['params_m']:.2f}", f"{c['gflops']:.2f}", f"{c['attention_gflops']:.3f}",
                  c.get("block_out_channels", "")] for name, c in counts.items()])
    peak: list[float] = []
    if quick or fast_dtype() == torch.float32:
        bf16 = fast_dtype() == torch.bfloat16
        modes = {"forward": "bf16-weights channels-last" if bf16 else "fp32 channels-last",
                 "train": "bf16-autocast channels-last" if bf16 else "fp32 channels-last"}
        chosen, mode_rows = {(m.name, k): v for m in models for k, v in modes.items()}, []
    else:
        chosen, mode_rows = pick_modes(models, 8, max(2, rounds - 2), peak)
        print("\nmodes at batch 8 (samples/s, best round):")
        print_table(["model", "pass", "mode", "samples/s"], mode_rows)

    results = []
    for batch in batches:
        runs = {}
        for m in models:
            runs[(m.name, "forward")] = m.forward(batch, chosen[(m.name, "forward")])
            runs[(m.name, "train")] = m.training_step(batch, chosen[(m.name, "train")])
        times = interleaved(runs, rounds, peak)
        memory = {key: peak_memory_mib(fn) for key, fn in runs.items()}
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
            times = interleaved(runs, rounds, peak)
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
    parser.add_argument("--out", type=Path, default=RESULTS / "unet_vs_diffusers.json")
    args = parser.parse_args()
    batches = args.batches or ([1, 8] if args.quick else [1, 8, 16])
    rounds = args.rounds or (3 if args.quick else 6)
    config = UNETS[args.unet]
    if args.ablation:
        rows = ablation(config, batches[-1], rounds)
        print_table(["variant", "img/s", "vs chosen", "page faults/forward"],
                    [[r["variant"], f"{r['img_s']:.1f}", f"{r['vs_chosen']:.2f}x", r.get("page_faults_per_forward", "")]
                     for r in rows])
        out = args.out.with_name(args.out.stem + "_ablation.json")
        write_json(out, {"unet": args.unet, "batch": batches[-1], "rounds": rounds, "machine": machine(), "results": rows})
        print(f"\nwrote {out}")
        return
    allocator = tune_allocator()
    report = compare(config, batches, rounds, args.quick, args.compile)
    print(f"\nfast dtype: {fast_dtype()}; glibc allocator tuned: {allocator}; "
          f"bf16 matmul rate (best 2048/4096 square matmul, this run): {report['matmul_tflop_s']:.2f} TFLOP/s\n")
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
                          "rounds": rounds, "machine": machine(), **report})
    print(f"\nwrote {args.out}")


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    main()
