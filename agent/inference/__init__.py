"""agent/inference"""
