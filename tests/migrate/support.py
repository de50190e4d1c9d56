"""The shard the migrations' API and restart tests migrate: two KV DALs on one gRPC
listener, the operator's shadow between them."""

KV = """\
proxy_config:
  public_listeners:
    grpc: {mode: grpc, path: 18080}
container_dals:
  thrift: {container_listeners: {grpc: 18081}, api: dgw.kv.v1, read_methods: [/dgw.kv.v1.KeyValue/Get*]}
  cql: {container_listeners: {grpc: 18082}, api: dgw.kv.v1, read_methods: [/dgw.kv.v1.KeyValue/Get*]}
wiring:
  thrift: {mode: shadow, target: cql}  # the operator's shadow, before any migration
"""
M = "/v1/migrations/kv"
WRITES = {"mode": "shadow", "target": "cql", "traffic": "writes"}
