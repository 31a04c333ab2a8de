"""Veil cryptographic protocols: pure steps, no gRPC inside."""
