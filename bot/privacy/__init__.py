"""Personal data: found and redacted in one module (``pii``), kept out of logs by ``logfilter``."""
