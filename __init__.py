"""modelrunner: run AI models locally the way containers run programs."""

__version__ = "0.1.0"
