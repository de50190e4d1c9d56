"""A small DAL that answers HTTP and gRPC on the ports the agent assigns.

Every listener named in ``DGW_LISTENERS`` (comma-separated) or found as
``DGW_LISTENER_<NAME>_PORT`` is served: names containing ``grpc`` speak gRPC
(``/dgw.sample.v1.Echo/Echo`` echoes its bytes prefixed with the DAL name,
``/dgw.sample.v1.Echo/Stats`` returns the request count), all others HTTP
(``GET /health``, ``GET /stats``, anything else echoed as JSON).

Knobs (env): ``DGW_DAL_NAME``; ``SAMPLE_DELAY_MS`` delays every answer (a slow shadow
target); ``SAMPLE_UNHEALTHY_FILE``: while that file exists /health answers 503.
"""
