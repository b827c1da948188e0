"""``make bench``: throughput, latency, Redis round trips, CPU and memory per RPC.

Everything runs on this machine in separate processes: a Valkey, the server
(``tokenservice serve``), Envoy for the edge scenarios, and load generators
(``multiprocessing`` with grpc.aio clients; ``wrk`` for HTTP when installed). Every figure
is also given as a ratio to the baseline (``grpc.health.v1.Health/Check`` on the same
server and interceptors) measured in the same run, because the machine is shared and noisy.
See docs/performance.md.
"""
