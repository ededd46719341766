"""ember: a self-hosted server for the Fireworks AI text-completion API, on its own PyTorch engine."""

__version__ = "0.1.0"
