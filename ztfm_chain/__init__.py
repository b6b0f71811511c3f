"""Zero-trust federated learning for IoT fleets, with provenance on an EVM chain."""

__version__ = "0.1.0"
