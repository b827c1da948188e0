"""Generated protobuf and gRPC stubs of the proto package ``tokenservice.v1``.

Modules: ``token_service_pb2``, ``client_registry_pb2``, ``cache_service_pb2``, ``errors_pb2``
(messages, ``.pyi`` typed) and the matching ``*_pb2_grpc`` (stubs and servicers). Generated
by ``make gen`` (scripts/gen_protos.py); do not edit them by hand.
"""
