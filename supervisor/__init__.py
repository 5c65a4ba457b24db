"""agent-supervisor: a node-local lifecycle supervisor that stops restart storms of node agents."""

__version__ = "0.1.0"
