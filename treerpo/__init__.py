"""treerpo: train language models to reason with TreeRPO (GRPO grown into a tree)."""

__version__ = "0.1.0"
