"""llmfab: raw text to a 4-bit quantized, monitored LLM endpoint, on one machine or a k3s cluster."""

__version__ = "0.1.0"
