"""Client side of tokenservice: generated stubs (``tokenservice.v1``) and a typed client.

The generated modules mirror the proto package ``tokenservice.v1``::

    from tokenservice.v1 import token_service_pb2, token_service_pb2_grpc

:mod:`tokenservice.client` wraps channel creation and error decoding.
"""
