"""etcd's v3 API (``etcdserverpb``, ``mvccpb``, ``authpb``), generated from etcd's own .proto
files by ``protos/generate.sh``; the config store's etcd client is ``xds_server.store.etcd_client``."""
