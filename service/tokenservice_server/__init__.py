"""tokenservice server: gRPC transport -> OAuth2/cache domain -> Redis storage."""

__all__ = ["__version__"]

__version__ = "0.1.0"
