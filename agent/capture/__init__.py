"""agent/capture"""
