"""OAuth2 and cache rules in plain Python: no grpc, no protobuf, no Redis."""
