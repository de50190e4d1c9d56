"""The xds_server's own APIs: the ``dgw.v1.Gateway`` gRPC service for sidecars and
the admin HTTP API for operators. Both are thin: state lives in ``ShardRegistry``."""
