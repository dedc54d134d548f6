"""fleet-server"""
