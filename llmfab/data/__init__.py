"""llmfab.data"""
