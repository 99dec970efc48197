"""What post-training objectives read besides a Dataset: :mod:`base_model` (the model a run starts
from, its tokenizer and shape) and :mod:`jsonl_rows` (rows of the JSONL files a spec names)."""
