"""The two U-Nets that ``unet_vs_diffusers.py`` compares, built at matched parameters and FLOPs.

The diffusers model has our layout (blocks per level, attention levels, head width, text width)
and block widths picked from a short list to come within 10% of our parameter count and FLOPs per
image, both counted here: ``torch.utils.flop_counter`` for matmuls and convolutions, plus
4 * N * heads * Lq * Lk * d for each ``scaled_dot_product_attention`` call, which the counter misses
on the CPU. Same inputs (64 px images, 32 text tokens, a pooled text vector: diffusers'
``class_embed_type="projection"``).

A mode is a string of words: ``fp32`` or ``bf16-autocast`` or ``bf16-weights``, optionally
``channels-last``, ``fused-qkv`` (diffusers only) and ``compile``.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from measure import synchronized  # noqa: E402

from cascade.device import prepare_for_inference  # noqa: E402
from stages.conditioning import Conditioning  # noqa: E402
from stages.fused import unfused  # noqa: E402
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
    # A few-second stand-in for the dry run of gpu_check.sh (checks the script, measures nothing).
    "dry": UNetConfig(base_channels=32, channel_mults=(1, 2), res_blocks=(1, 1), attention_levels=(False, True),
                      head_dim=32, text_dim=32, pooled_dim=32, context_dim=32),
}
DIFFUSERS_WIDTHS = [(64, 128, 160, 224), (64, 128, 192, 192), (64, 128, 192, 224), (64, 128, 160, 192),
                    (64, 128, 128, 256), (64, 128, 160, 256), (64, 128, 192, 256), (64, 96, 192, 256),
                    (64, 128, 128, 192), (64, 96, 160, 224)]


class AttentionFlops(TorchFunctionMode):
    """Adds 4 * batch * heads * Lq * Lk * d per scaled_dot_product_attention call (QK^T and PV)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            self.flops += 4 * args[0].numel() * args[1].shape[-2]
        return func(*args, **(kwargs or {}))


def mode_cast(mode: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The bf16 autocast of ``bf16-autocast`` modes on ``device``, else nothing."""
    return torch.autocast(device.type, torch.bfloat16) if "autocast" in mode else contextlib.nullcontext()


class Model:
    """A U-Net and how to call it on ``device``; prepared copies per mode; forward and training-step closures."""

    def __init__(self, name: str, net: nn.Module, call: Callable[..., torch.Tensor], text_dim: int,
                 device: torch.device | str = "cpu") -> None:
        self.name, self.net, self.call, self.text_dim = name, net, call, text_dim
        self.device = torch.device(device)
        self.prepared: dict[str, Any] = {}

    def release(self) -> None:
        """Drop the prepared copies (each holds weights, and for training the optimizer state)."""
        self.prepared.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def inputs(self, batch: int, dtype: torch.dtype = torch.float32, channels_last: bool = False,
               device: torch.device | None = None) -> tuple:
        """(x [B, 3, 64, 64], t [B], tokens [B, 32, D], pooled [B, D]), the same draws on every device."""
        device = self.device if device is None else device
        g = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, 3, RESOLUTION, RESOLUTION, generator=g).to(device, dtype)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        t = (torch.rand(batch, generator=g) * 999).to(device)
        tokens = torch.randn(batch, TOKENS, self.text_dim, generator=g).to(device, dtype)
        return x, t, tokens, torch.randn(batch, self.text_dim, generator=g).to(device, dtype)

    def count(self) -> dict[str, float]:
        """Parameters (M) and GFLOPs of one image (counted on the CPU)."""
        with torch.no_grad(), unfused(), FlopCounterMode(display=False) as counter, AttentionFlops() as attention:
            self.call(self.net, *self.inputs(1, device=torch.device("cpu")))
        return {"params_m": sum(p.numel() for p in self.net.parameters()) / 1e6,
                "gflops": (counter.get_total_flops() + attention.flops) / 1e9, "attention_gflops": attention.flops / 1e9}

    def module_for(self, mode: str) -> nn.Module:
        if mode not in self.prepared:
            net = copy.deepcopy(self.net).eval().requires_grad_(False)
            if "fused" in mode:
                net.fuse_qkv_projections()
            dtype = torch.bfloat16 if "bf16-weights" in mode else torch.float32
            self.prepared[mode] = prepare_for_inference(net, self.device, dtype=dtype,
                                                        channels_last="channels-last" in mode, compile="compile" in mode)
        return self.prepared[mode]

    def forward(self, batch: int, mode: str, grad_mode: Callable = torch.inference_mode) -> Callable[[], None]:
        net = self.module_for(mode)
        x, t, tokens, pooled = self.inputs(batch, torch.bfloat16 if "bf16-weights" in mode else torch.float32,
                                           "channels-last" in mode)

        def run() -> None:
            with grad_mode(), mode_cast(mode, self.device):
                self.call(net, x, t, tokens, pooled)

        return synchronized(run, self.device)

    def training_step(self, batch: int, mode: str) -> Callable[[], None]:
        """Forward, MSE loss, backward and a fused AdamW step on fp32 master weights.

        ``bf16-autocast``: fp32 weights, the forward under bf16 autocast. ``bf16-weights``: a bf16
        network whose gradients step fp32 master copies, which are then copied back (what the
        DeepSpeed bf16 engine of ``train_stage.py`` does).
        """
        key = "train " + mode
        bf16_weights = "bf16-weights" in mode
        if key not in self.prepared:
            net = copy.deepcopy(self.net).to(self.device).train()
            net = net.to(memory_format=torch.channels_last) if "channels-last" in mode else net
            params = list(net.parameters())
            master = [nn.Parameter(p.detach().float().clone()) for p in params] if bf16_weights else params
            if bf16_weights:
                net = net.to(torch.bfloat16)
            self.prepared[key] = (net, params, master, torch.optim.AdamW(master, lr=1e-5, fused=True))
        net, params, master, optimizer = self.prepared[key]
        x, t, tokens, pooled = self.inputs(batch, torch.bfloat16 if bf16_weights else torch.float32, "channels-last" in mode)
        target = torch.randn_like(x, dtype=torch.float32)

        def run() -> None:
            with mode_cast(mode, self.device):
                out = self.call(net, x, t, tokens, pooled)
            F.mse_loss(out.float(), target).backward()
            if bf16_weights:
                for m, p in zip(master, params):
                    m.grad = None if p.grad is None else p.grad.float()  # unused parameters get none
                    p.grad = None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if bf16_weights:
                with torch.no_grad():
                    torch._foreach_copy_(params, master)

        return synchronized(run, self.device)


def ours(config: UNetConfig, device: torch.device | str = "cpu") -> Model:
    def call(net, x, t, tokens, pooled):
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return net(x, t, Conditioning(text_tokens=tokens, text_mask=mask, pooled=pooled))

    torch.manual_seed(0)
    return Model("ours", UNet(config), call, config.text_dim, device)


def diffusers_unet(widths: tuple[int, ...], config: UNetConfig, device: torch.device | str = "cpu") -> Model:
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

    return Model("diffusers", net, call, config.text_dim, device)


def scaled_widths(config: UNetConfig) -> list[tuple[int, ...]]:
    """Candidate diffusers widths: the list above for 64-wide U-Nets, scaled to ``config``'s base width,
    cut to its number of levels (the dry run's small U-Net); multiples of 32, diffusers' GroupNorm groups."""
    scale = config.base_channels / 64
    levels = len(config.channel_mults)
    return [tuple(max(32, round(w * scale / 32) * 32) for w in widths[:levels]) for widths in DIFFUSERS_WIDTHS]


def matched_diffusers(config: UNetConfig, reference: dict[str, float], device: torch.device | str = "cpu",
                      tolerance: float = 0.10) -> tuple[Model, dict[str, Any]]:
    """The first candidate widths within 5% of ``reference`` in parameters and FLOPs, else the closest
    (which must be within ``tolerance``)."""
    best = None
    for widths in scaled_widths(config):
        model = diffusers_unet(widths, config, device)
        counts = model.count()
        error = max(abs(counts[k] / reference[k] - 1) for k in ("params_m", "gflops"))
        if best is None or error < best[0]:
            best = (error, model, {**counts, "block_out_channels": list(widths)})
        if error < 0.05:
            break
    if best[0] > tolerance:
        raise SystemExit(f"no diffusers widths within {tolerance:.0%} of ours (closest: {best[2]})")
    return best[1], best[2]
