"""llmfab.serving"""
