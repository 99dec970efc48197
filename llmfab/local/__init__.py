"""llmfab.local"""
