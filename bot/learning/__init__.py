"""The learning loop: training records from past conversations, cleaned for fine-tuning."""
