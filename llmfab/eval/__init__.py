"""llmfab.eval"""
