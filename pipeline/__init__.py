"""medsynth: a reproducible pipeline from medical scans to trustworthy synthetic training data."""

__version__ = "0.1.0"
