"""cascade: cascaded text-to-image and text-to-video diffusion.

Importing the package loads no model and touches no network: every model is
built or loaded when a command or a function asks for it.
"""

__version__ = "0.1.0"
