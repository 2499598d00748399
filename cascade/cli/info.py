"""``cascade info``: versions, the machine's fast number formats, and what the package offers."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="show versions, the CPU's bf16 support, schedules and samplers")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import platform

    import torch

    from cascade import __version__
    from cascade.diffusion.schedules import SCHEDULE_NAMES

    print(f"cascade {__version__} (python {platform.python_version()}, torch {torch.__version__})")
    print(f"cpu: {torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}")
    print(f"cuda available: {torch.cuda.is_available()}")
    print(f"schedules: {', '.join(SCHEDULE_NAMES)}")
    try:
        from cascade.sampling.registry import SAMPLER_NAMES

        print(f"samplers: {', '.join(SAMPLER_NAMES)}")
    except ImportError:
        pass
    return 0
