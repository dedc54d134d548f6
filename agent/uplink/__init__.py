"""agent/uplink"""
