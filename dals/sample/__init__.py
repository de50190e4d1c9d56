"""A small DAL that answers HTTP and gRPC on the ports the agent assigns.

Every listener named in ``DGW_LISTENERS`` (comma-separated) or found as
``DGW_LISTENER_<NAME>_PORT`` is served: names containing ``grpc`` speak gRPC
(``/dgw.sample.v1.Echo/Echo`` echoes its bytes prefixed with the DAL name,
``/dgw.sample.v1.Echo/Write`` does the same but counts as a write,
``/dgw.sample.v1.Echo/Stats`` returns the counters as JSON), all others HTTP
(``GET /health``, ``GET /stats``, ``PUT /faults``, anything else echoed as JSON).

A DAL with a known capacity and fault modes, for resilience tests and benchmarks.
Knobs (env), each also settable live with ``PUT /faults`` (a JSON object of the
lower-case names without the prefix, e.g. ``{"fail": true, "slow_percent": 10}``):

- ``DGW_DAL_NAME``; ``SAMPLE_DELAY_MS``: the service time of every answer;
- ``SAMPLE_CONCURRENCY``: at most that many requests in service at once (0: no limit);
  the rest wait their turn in arrival order, so the DAL's capacity is
  ``concurrency / service time``;
- ``SAMPLE_SLOW_PERCENT`` of requests take ``SAMPLE_SLOW_MS`` instead (random, seeded
  by ``SAMPLE_SEED``);
- ``SAMPLE_FAIL``: answer every call with HTTP 503 / gRPC UNAVAILABLE after its service
  time (like a DAL whose datastore fails; still counted); ``SAMPLE_FAIL_FILE``: the same
  while that file exists;
- ``SAMPLE_UNHEALTHY_FILE``: while that file exists /health answers 503.

``GET /stats``: ``requests`` (every call served or failed), ``by_path``, ``by_method``
(HTTP method, or the gRPC method's full name), ``failed``, ``in_service`` and
``max_in_service`` (the most calls in service at once), ``waiting`` (queued now).
"""
