"""Emporion: a self-hostable, OpenAI-compatible marketplace and gateway for generative AI models."""

__version__ = "0.1.0"
