"""Host port assignment: sticky, conflict-free, and a clear error when impossible."""

import socket

from sidecar.ports import assign_ports, port_in_use

RANGE = (20000, 20009)


def assign(wanted, previous=None, reserved=None, owned=(), busy=(), port_range=RANGE):
    return assign_ports(
        wanted, previous=previous or {}, reserved=reserved or {}, owned=set(owned),
        in_use=lambda p: p in set(busy), port_range=port_range,
    )


def test_two_dals_both_saying_8980_get_distinct_host_ports():
    a = assign({"cql": ["secure_grpc"], "thrift": ["secure_grpc"]})
    assert a.ports == {"cql": {"secure_grpc": 20000}, "thrift": {"secure_grpc": 20001}}
    assert not a.errors


def test_reserved_and_busy_ports_are_skipped():
    a = assign({"d": ["a", "b"]}, reserved={20000: "public listener x"}, busy={20001})
    assert a.ports == {"d": {"a": 20002, "b": 20003}}


def test_previous_ports_are_kept_even_if_a_lower_one_is_free():
    a = assign({"d": ["http"], "e": ["http"]}, previous={"d": {"http": 20005}})
    assert a.ports["d"] == {"http": 20005}
    assert a.ports["e"] == {"http": 20000}


def test_a_live_instance_keeps_its_port_although_it_is_bound():
    a = assign({"d": ["http"]}, previous={"d": {"http": 20003}}, owned={20003}, busy={20003})
    assert a.ports["d"] == {"http": 20003}


def test_a_dead_instances_port_taken_by_someone_else_is_replaced():
    a = assign({"d": ["http"]}, previous={"d": {"http": 20003}}, busy={20003})
    assert a.ports["d"] == {"http": 20000}


def test_a_port_now_reserved_by_a_public_listener_moves_the_dal():
    a = assign({"d": ["http"]}, previous={"d": {"http": 20003}}, owned={20003},
               reserved={20003: "public listener http"})
    assert a.ports["d"] == {"http": 20000}


def test_a_live_port_of_a_removed_dal_is_not_handed_out():
    a = assign({"new": ["http"]}, owned={20000})
    assert a.ports["new"] == {"http": 20001}


def test_new_dal_never_steals_a_kept_port():
    a = assign({"a": ["x"], "b": ["x"]}, previous={"b": {"x": 20000}})
    assert a.ports == {"a": {"x": 20001}, "b": {"x": 20000}}


def test_exhausted_range_is_a_clear_error_for_that_dal_only():
    a = assign({"a": ["x"], "b": ["x", "y"]}, port_range=(20000, 20001))
    assert a.ports == {"a": {"x": 20000}}
    assert "no free host port for dal b listener y in 20000-20001" in a.errors["b"]
    assert "--dal-ports" in a.errors["b"]


def test_port_in_use_sees_a_listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert port_in_use(s.getsockname()[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert not port_in_use(port)


def test_claims_keep_agents_of_one_process_apart():
    from sidecar.ports import PortClaims

    claims = PortClaims()
    claims.claim("kv/n1", {20000, 20001})
    a = assign({"d": ["http"]}, reserved=claims.others("rds/n1"))
    assert a.ports["d"] == {"http": 20002}
    assert claims.others("kv/n1") == {}
    claims.release("kv/n1")
    assert claims.others("rds/n1") == {}
