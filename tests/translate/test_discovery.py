from xds_server.translate import RegisteredHost, discovery_assignments


def test_one_assignment_per_address_and_listener_with_every_host():
    hosts = [
        RegisteredHost("kv", "n2", "10.0.0.2", {"grpc": 8980, "http": 8443}),
        RegisteredHost("kv", "n1", "10.0.0.1", {"grpc": 8980, "http": 8443}),
    ]
    out = discovery_assignments({"kv.dgw": hosts})
    assert sorted(out) == ["kv.dgw/grpc", "kv.dgw/http"]
    grpc = out["kv.dgw/grpc"]
    assert grpc.cluster_name == "kv.dgw/grpc"
    addresses = [e.endpoint.address.socket_address for e in grpc.endpoints[0].lb_endpoints]
    assert [(a.address, a.port_value) for a in addresses] == [("10.0.0.1", 8980), ("10.0.0.2", 8980)]


def test_no_hosts_no_assignments():
    assert discovery_assignments({"kv.dgw": []}) == {}
