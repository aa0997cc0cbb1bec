"""Safety checks around a turn: one normalisation (``normalize``), the operator blocklist (``blocklist``),
prompt-injection and SQL / shell shapes (``injection``), and the pipeline steps that use them: the input
filter (``input_filter``, before the dialogue) and the output filter (``output_filter``, after it)."""
