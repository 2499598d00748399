"""Named stage presets: tiny ones for tests, small ones for the shapes world, and the published
sizes of Imagen's and unCLIP's stages (as configs only: they need GPUs).

A training YAML may name a preset (``preset: shapes-base64``) and override any of its fields
under ``stage:``.
"""

from __future__ import annotations

from cascade.stage import ScheduleConfig, StageConfig
from stages.unet import UNetConfig

# The world CLIP's text tower: token width and pooled width (see stages/clip_world.py).
SHAPES_TEXT = dict(text_dim=192, pooled_dim=192, context_dim=192)


def _tiny_unet(**overrides) -> UNetConfig:
    base = dict(base_channels=16, channel_mults=(1, 2), res_blocks=(1, 1), attention_levels=(False, True),
                head_dim=16, text_dim=32, pooled_dim=16, context_dim=32)
    base.update(overrides)
    return UNetConfig(**base)


PRESETS: dict[str, StageConfig] = {
    # ---------------------------------------------------------------- tiny: tests, seconds on a CPU
    "tiny-base16": StageConfig(name="base", resolution=16, unet=_tiny_unet()),
    "tiny-sr32": StageConfig(
        name="sr32", resolution=32, low_resolution=16, residual_scale=0.125,
        unet=_tiny_unet(low_res_channels=3, noise_augmentation=True, attention_levels=(False, False)),
    ),
    "tiny-video16": StageConfig(name="video16", resolution=16, frames=4, frame_noise_correlation=0.8,
                                unet=_tiny_unet(temporal=True, temporal_frame_position=True,
                                                first_frame_conditioning=True)),
    # ---------------------------------------------------------------- shapes world: trains on this CPU
    # Base: 13.6M parameters, 7.6 GFLOP per 64 px image; one block at full resolution, attention with
    # the world CLIP's text tokens at 16 and 8 px (Imagen's Efficient U-Net: capacity at low resolution).
    "shapes-base64": StageConfig(
        name="base64", resolution=64,
        unet=UNetConfig(base_channels=48, channel_mults=(1, 2, 3, 4), res_blocks=(1, 2, 2, 2),
                        attention_levels=(False, False, True, True), head_dim=48, **SHAPES_TEXT),
    ),
    # The same U-Net with temporal layers (16.2M parameters, 69 GFLOP per 8-frame clip). Its frames'
    # noise is correlated (PYoCo's mixed prior, rho = 0.8): from independent noise, 500 steps of training
    # left each frame guessing its own layout at high noise, and objects jumped between frames. Each
    # frame also knows its place in the clip (temporal_frame_position): without it, 2,550 steps left
    # the objects in place or flickering rather than moving; 1,000 more with it have not made them
    # move yet either (docs/training.md). So it is given its first frame, drawn by the base
    # (first_frame_conditioning, Emu Video's factorisation): it keeps the objects and moves them.
    "shapes-video64": StageConfig(
        name="video64", resolution=64, frames=8, frame_noise_correlation=0.8,
        unet=UNetConfig(base_channels=48, channel_mults=(1, 2, 3, 4), res_blocks=(1, 2, 2, 2),
                        attention_levels=(False, False, True, True), head_dim=48, temporal=True,
                        temporal_frame_position=True, first_frame_conditioning=True, **SHAPES_TEXT),
    ),
    # Super-resolution stages are convolutional (no attention) and not text-conditioned, as unCLIP's
    # upsamplers (Ramesh et al. 2022, section 2.1), so they train on crops and run on whole images.
    # They diffuse the residual over the bicubic upsampling (SRDiff) under the plain cosine schedule: the
    # low frequencies come with the conditioning, so training time goes to the noise levels that decide
    # the detail. The same networks diffusing the image under the shifted cosine, after 1,000 steps,
    # drew worse than bilinear upsampling (docs/training.md). residual_scale: the residual's standard
    # deviation over the images' (256 px: 0.062 / 0.54; 1024 px: 0.040 / 0.46), so it spreads like an image.
    "shapes-sr256": StageConfig(
        name="sr256", resolution=256, low_resolution=64, schedule=ScheduleConfig("cosine"),
        max_train_aug=0.3, sample_aug=0.05, residual_scale=0.125, loss_weighting="none",
        unet=UNetConfig(base_channels=32, channel_mults=(1, 2, 4), res_blocks=(1, 2, 2),
                        attention_levels=(False, False, False), head_dim=32, text_dim=None, pooled_dim=None,
                        low_res_channels=3, noise_augmentation=True),
    ),
    "shapes-sr1024": StageConfig(
        name="sr1024", resolution=1024, low_resolution=256, schedule=ScheduleConfig("cosine"),
        max_train_aug=0.3, sample_aug=0.05, residual_scale=0.08, loss_weighting="none",
        unet=UNetConfig(base_channels=16, channel_mults=(1, 2, 4), res_blocks=(1, 1, 2),
                        attention_levels=(False, False, False), head_dim=32, text_dim=None, pooled_dim=None,
                        low_res_channels=3, noise_augmentation=True),
    ),
    # ---------------------------------------------------------------- published sizes (configs only)
    # Imagen (Saharia et al. 2022, appendix F): 2B-parameter 64 px base, T5-XXL (4096-d) text.
    "imagen-base64": StageConfig(
        name="base64", resolution=64,
        unet=UNetConfig(base_channels=512, channel_mults=(1, 2, 3, 4), res_blocks=(3, 3, 3, 3),
                        attention_levels=(False, True, True, True), head_dim=64, text_dim=4096,
                        pooled_dim=4096, context_dim=1024),
    ),
    # Imagen's 600M Efficient U-Net 64 -> 256 (text cross-attention at the lowest resolution only).
    "imagen-sr256": StageConfig(
        name="sr256", resolution=256, low_resolution=64, schedule=ScheduleConfig("shifted-cosine"),
        unet=UNetConfig(base_channels=128, channel_mults=(1, 2, 4, 8), res_blocks=(2, 4, 8, 8),
                        attention_levels=(False, False, False, True), head_dim=64, text_dim=4096,
                        pooled_dim=4096, context_dim=1024, low_res_channels=3, noise_augmentation=True),
    ),
    # Imagen's 400M Efficient U-Net 256 -> 1024, trained on 256 px crops, no self-attention.
    "imagen-sr1024": StageConfig(
        name="sr1024", resolution=1024, low_resolution=256, schedule=ScheduleConfig("shifted-cosine"),
        unet=UNetConfig(base_channels=128, channel_mults=(1, 2, 4, 4), res_blocks=(2, 2, 4, 4),
                        attention_levels=(False, False, False, False), head_dim=64, text_dim=4096,
                        pooled_dim=4096, context_dim=1024, low_res_channels=3, noise_augmentation=True),
    ),
    # unCLIP's decoder (Ramesh et al. 2022, appendix C): 3.5B, CLIP ViT-H image embedding (1024-d)
    # projected to 4 extra tokens and added to the time embedding.
    "unclip-decoder64": StageConfig(
        name="base64", resolution=64,
        unet=UNetConfig(base_channels=512, channel_mults=(1, 2, 3, 4), res_blocks=(3, 3, 3, 3),
                        attention_levels=(False, True, True, True), head_dim=64, text_dim=1024,
                        pooled_dim=None, image_embed_dim=1024, image_tokens=4, context_dim=1024),
    ),
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)
