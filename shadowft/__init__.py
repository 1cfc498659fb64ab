"""shadowft: tune the Base model (the shadow), graft its update onto the Instruct model."""

__version__ = "0.1.0"
