"""The Key-Value DAL: an application on the Data Gateway platform (it imports nothing
from the platform, and the platform nothing from it).

Per namespace, a ``HashMap[String, SortedMap[Bytes, Bytes]]``: a record id maps to
items sorted by key. The API (``dgw.kv.v1.KeyValue``, ``protos/dals/kv/v1/kv.proto``) is
served over gRPC and HTTP/JSON by ``python -m dals.kv serve``; ``dals.kv.client`` is
the async client and ``python -m dals.kv put|get|delete|scan`` its command line.

- ``v1/``        the generated API code (messages and gRPC stubs)
- ``config.py``  the DAL's configuration: namespaces, engines, cache, limits
- ``tokens.py``  idempotency tokens and the versions they give writes
- ``engines/``   the storage engine contract (``base.py``), ``sqlite.py``, ``postgres.py``
- ``cache.py``   the look-aside Redis cache
- ``pages.py``   page tokens and cursors
- ``service.py`` the calls: guardrails, chunking, byte-bounded pages, the cache
- ``grpc_api.py``, ``http_api.py``, ``server.py``  the process and its listeners
- ``client.py``, ``cli.py``  the client and its command line
"""
