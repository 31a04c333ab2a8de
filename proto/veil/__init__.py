"""Generated code for the veil.v1 gRPC API."""
