"""llmfab.training"""
