"""kefu-hub core: events, configuration, the hub, dialogue state and the FAQ."""

__version__ = "0.1.0"
