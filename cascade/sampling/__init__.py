"""Samplers as functions of one shape over a denoiser, plus guidance and clipping wrappers.

``sampler(denoiser, x_T, plan, *, generator=None, callback=None) -> x_0``; see
:mod:`cascade.sampling.registry` for the names and :func:`sample` for the entry point.
"""

from cascade.sampling.ancestral import sample_ddim, sample_ddpm
from cascade.sampling.denoiser import Denoiser, denoiser_from_model
from cascade.sampling.dpm_solver import sample_dpmpp_2m
from cascade.sampling.guidance import classifier_free_guidance, dynamic_threshold, static_clip
from cascade.sampling.karras import sample_euler, sample_heun
from cascade.sampling.plan import SamplingPlan, build_plan, karras_plan, log_snr_plan, plan_from_times, spaced_plan
from cascade.sampling.registry import SAMPLER_NAMES, SAMPLERS, get_sampler, sample

__all__ = [
    "SAMPLERS",
    "SAMPLER_NAMES",
    "Denoiser",
    "SamplingPlan",
    "build_plan",
    "classifier_free_guidance",
    "denoiser_from_model",
    "dynamic_threshold",
    "get_sampler",
    "karras_plan",
    "log_snr_plan",
    "plan_from_times",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_heun",
    "spaced_plan",
    "static_clip",
]
