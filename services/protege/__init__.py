"""Protégé: serve a foundation model and the specialist it teaches, and keep teaching it."""

__version__ = "0.1.0"
