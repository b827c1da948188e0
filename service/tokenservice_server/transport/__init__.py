"""gRPC transport: servicers that adapt requests to the domain, interceptors, health."""
