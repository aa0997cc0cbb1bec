"""Online A/B tests of LoRA adapters (issue 13): ``assign.py`` the deterministic arm of a user and the
per-turn adapter override, ``step.py`` the pipeline steps and the per-arm metrics, ``report.py``
``python -m bot ab-report``. Kept import-light: ``bot.answer`` imports ``assign`` and nothing heavier."""
