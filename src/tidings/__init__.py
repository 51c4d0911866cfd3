"""Tidings: a self-hosted WhatsApp engagement platform."""

__version__ = "0.1.0"
