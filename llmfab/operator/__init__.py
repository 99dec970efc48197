"""llmfab.operator"""
