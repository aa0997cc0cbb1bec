"""Fine-tuning and evaluating LoRA adapters for the local engine (``python -m bot train | eval``).

Engine-only: records arrive as plain objects with ``query``, ``response`` and ``context`` attributes, and
how a record becomes a prompt (the system prompt, where the context goes) is a :data:`Framer` the caller
passes, so training sees the same prompt as serving (``bot/answer.py`` builds it there).
"""

from engine.training.framing import Framer, TrainRecord, default_framer, prompt_messages

__all__ = ["Framer", "TrainRecord", "default_framer", "prompt_messages"]
