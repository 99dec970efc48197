"""``objective: sft``: :mod:`objective` (the objective) and :mod:`examples` (chats to token rows)."""
