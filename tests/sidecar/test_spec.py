"""DAL specs: listener env names, ports per network mode, hashes and labels."""

import pytest

from sidecar.spec import (
    LABEL_PORTS,
    LABEL_SPEC_HASH,
    SpecError,
    build_spec,
    listener_env_name,
    parse_ports_label,
)
from xds_server.config.model import RuntimeConfig

SEED = RuntimeConfig.model_validate(
    {
        "proxy_config": {"public_listeners": {"secure_grpc": {"mode": "grpc", "path": 8980}}},
        "container_dals": {
            "cql": {"image": "dgw-kv", "container_listeners": {"secure_grpc": 8980}},
            "thrift": {
                "image": "dgw-kv",
                "container_listeners": {"secure_grpc": 8980},
                "env": {"STORAGE_ENGINE": "thrift", "DEBUG": True, "EMPTY": None},
            },
        },
    }
)


def spec(cfg=SEED, name="thrift", ports=None, mode="host", **kw):
    return build_spec(
        cfg, name, shard="kv", node="n1", host_ports=ports or {"secure_grpc": 20001},
        network_mode=mode, bind_address="127.0.0.1", **kw,
    )


@pytest.mark.parametrize(
    "listener, var",
    [
        ("secure_grpc", "DGW_LISTENER_SECURE_GRPC_PORT"),
        ("http", "DGW_LISTENER_HTTP_PORT"),
        ("secure-http.v2", "DGW_LISTENER_SECURE_HTTP_V2_PORT"),
    ],
)
def test_listener_env_name(listener, var):
    assert listener_env_name(listener) == var


def test_host_mode_dal_listens_on_its_host_port():
    s = spec(mode="host")
    assert s.env_dict["DGW_LISTENER_SECURE_GRPC_PORT"] == "20001"
    assert s.env_dict["DGW_BIND_ADDRESS"] == "127.0.0.1"
    assert s.listeners[0].container_port == 8980 and s.listeners[0].host_port == 20001


def test_bridge_mode_dal_listens_on_its_container_port():
    s = spec(mode="bridge")
    assert s.env_dict["DGW_LISTENER_SECURE_GRPC_PORT"] == "8980"
    assert s.env_dict["DGW_BIND_ADDRESS"] == "0.0.0.0"
    assert s.env_dict["DGW_ENVOY_HOST"] == "envoy"
    assert s.host_ports == {"secure_grpc": 20001}


def test_the_seeds_two_dals_on_8980_get_distinct_ports_in_host_mode():
    a = spec(name="cql", ports={"secure_grpc": 20000})
    b = spec(name="thrift", ports={"secure_grpc": 20001})
    assert a.env_dict["DGW_LISTENER_SECURE_GRPC_PORT"] != b.env_dict["DGW_LISTENER_SECURE_GRPC_PORT"]


def test_env_values_are_strings_and_the_agents_variables_win():
    cfg = RuntimeConfig.model_validate(
        {"container_dals": {"d": {"image": "i", "container_listeners": {"http": 80},
                                  "env": {"DGW_LISTENER_HTTP_PORT": "1", "X": 1.5}}}}
    )
    s = spec(cfg, "d", {"http": 20005})
    assert s.env_dict["DGW_LISTENER_HTTP_PORT"] == "20005"
    assert s.env_dict["X"] == "1.5"
    assert s.env_dict["DGW_DAL_NAME"] == "d" and s.env_dict["DGW_SHARD"] == "kv"
    assert spec().env_dict["DEBUG"] == "true" and spec().env_dict["EMPTY"] == ""


def test_hash_is_stable_and_changes_with_env_or_ports():
    assert spec().spec_hash == spec().spec_hash
    assert spec(ports={"secure_grpc": 20002}).spec_hash != spec().spec_hash
    changed = RuntimeConfig.model_validate(
        SEED.model_dump() | {"container_dals": {
            **SEED.model_dump()["container_dals"],
            "thrift": {**SEED.model_dump()["container_dals"]["thrift"], "env": {"STORAGE_ENGINE": "cql"}},
        }}
    )
    assert spec(changed).spec_hash != spec().spec_hash
    # The other DAL's spec does not move when thrift's does.
    assert spec(changed, "cql").spec_hash == spec(SEED, "cql").spec_hash


def test_labels_carry_identity_hash_and_ports():
    s = spec()
    labels = s.labels()
    assert labels["dgw.shard"] == "kv" and labels["dgw.node"] == "n1" and labels["dgw.dal"] == "thrift"
    assert labels[LABEL_SPEC_HASH] == s.spec_hash
    assert parse_ports_label(labels[LABEL_PORTS]) == {"secure_grpc": 20001}
    assert parse_ports_label("not json") == {} and parse_ports_label(None) == {}


def test_command_string_is_split_like_compose_list_is_execd():
    cfg = RuntimeConfig.model_validate(
        {"container_dals": {
            "s": {"container_cmd": "python -m dals.sample", "container_listeners": {"http": 1}},
            "l": {"container_cmd": ["python", "-m", "dals.sample"], "container_listeners": {"http": 1}},
        }}
    )
    assert spec(cfg, "s", {"http": 2}, mode="process").command == ("python", "-m", "dals.sample")
    assert spec(cfg, "l", {"http": 2}, mode="process").command == ("python", "-m", "dals.sample")


def test_process_runtime_needs_a_command_and_docker_an_image():
    with pytest.raises(SpecError, match="no container_cmd"):
        spec(mode="process")
    cfg = RuntimeConfig.model_validate(
        {"container_dals": {"d": {"container_cmd": "x", "container_listeners": {"http": 1}}}}
    )
    with pytest.raises(SpecError, match="no image"):
        spec(cfg, "d", {"http": 2}, mode="host")


def test_listener_names_that_collide_as_env_variables_are_an_error():
    cfg = RuntimeConfig.model_validate(
        {"container_dals": {"d": {"image": "i", "container_listeners": {"a-b": 1, "a_b": 2}}}}
    )
    with pytest.raises(SpecError, match="both map to DGW_LISTENER_A_B_PORT"):
        spec(cfg, "d", {"a-b": 20000, "a_b": 20001})


def test_healthcheck_durations_in_seconds():
    cfg = RuntimeConfig.model_validate(
        {"container_dals": {"d": {"image": "i", "container_listeners": {"http": 1},
                                  "healthcheck": {"test": "probe", "interval": "500ms",
                                                  "timeout": "1s", "retries": 0,
                                                  "start_period": "1m30s"}}}}
    )
    hc = spec(cfg, "d", {"http": 2}).healthcheck
    assert hc.test == ("CMD-SHELL", "probe") and hc.argv() == ["/bin/sh", "-c", "probe"]
    assert (hc.interval_s, hc.timeout_s, hc.retries, hc.start_period_s) == (0.5, 1.0, 3, 90.0)
    none = RuntimeConfig.model_validate(
        {"container_dals": {"d": {"image": "i", "healthcheck": {"test": ["NONE"]}}}}
    )
    assert spec(none, "d", {}).healthcheck is None
