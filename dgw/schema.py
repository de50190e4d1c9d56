"""The shard file's JSON Schema and its reference page, both generated from the
pydantic models (``xds_server/config/model.py``): ``dgw schema --write`` refreshes
``schema/shard.schema.json`` and ``docs/config-reference.md``; a test fails when either
is stale, so neither is ever edited by hand.

``MEANINGS`` says what each key is for (the models hold types, defaults and rules);
a test fails when a model gains a key without a meaning here.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from xds_server.config import model

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "schema" / "shard.schema.json"
REFERENCE_FILE = ROOT / "docs" / "config-reference.md"

# What container and network DALs both declare: their methods' kinds and their policy.
_DAL_METHODS_AND_POLICY = {
    "api": "The API the DAL serves (e.g. `dgw.kv.v1`): a migration moves data only between DALs of one "
           "API. Default: the gRPC services its `read_methods` name, else its image's name.",
    "read_methods": "gRPC methods that are reads (`/package.Service/Method`, `*` within a part): "
                    "all a read-only consumer may call on an `authz` listener. Default: Get*, "
                    "List*, Read*, Scan*, Search*, Describe*, Watch* and the gRPC health service.",
    "idempotent_methods": "gRPC writes (methods not in `read_methods`) that are safe to send twice, e.g. "
                          "because they carry an idempotency token: the gateway retries them. Other "
                          "writes are retried only when they never reached the DAL.",
    "stream_methods": "gRPC streaming methods (and always /grpc.health.v1.Health/Watch): no time limit "
                      "but the caller's own deadline, retried only when they never reached the DAL.",
    "resilience": "Timeouts, retries, hedging, circuit breakers, outlier detection and load shedding "
                  "for this DAL; keys not set here come from the shard's `resilience`, then the "
                  "service tier's defaults (docs/resilience.md).",
}

MEANINGS: dict[str, dict[str, str]] = {
    "ShardFile": {
        "proxy_config": "What the gateway's Envoy exposes on the host.",
        "container_dals": "DALs run on every gateway instance, as containers or local processes.",
        "network_dals": "DALs reached over the network (e.g. a managed database); nothing runs on the host.",
        "wiring": "How a DAL's traffic is shared with another DAL (shadow copy or split), keyed by the source DAL.",
        "registrations": "Discovery names this instance is registered under while it is healthy.",
        "deploy_desires": "Capacity, tier, versions, locations, owners and consumers of the shard "
                          "(may also live in a file of its own).",
        "resilience": "Timeouts, retries, hedging, circuit breakers, outlier detection and load shedding "
                      "for every DAL of the shard; keys not set here come from the service tier's defaults (`deploy_desires.service_tier`) (docs/resilience.md).",
        "allow_no_listeners": "Say true to accept a config with no public listener while Envoys of the "
                              "shard are connected (it would refuse all their traffic); otherwise "
                              "such a change is rejected.",
    },
    "ProxyConfig": {
        "public_listeners": "The host listeners, by name; each forwards to the DAL listeners of the same name.",
    },
    "PublicListener": {
        "mode": "The protocol Envoy speaks on it.",
        "path": "A TCP port (1-65535) on the public address, or a Unix socket named NAME.sock, which "
                "the gateway makes in its own socket directory (<state dir>/<shard>-<node>/sockets/; "
                "never a path on the host).",
        "tls_creds": "A TLS provider of the server (`metatron`: the local CA): the listener serves TLS with "
                     "the host's certificate and requires a client certificate chaining to the "
                     "provider's trust bundle (mTLS). Another name is an error listing the known ones.",
        "authz": "An authorization provider of the server (`gandalf`: the shard's "
                 "`deploy_desires.consumers`): only those consumers may call, read-only ones only "
                 "read methods (`read_methods`). Needs `tls_creds` (the caller's identity).",
    },
    "ContainerDal": {
        **_DAL_METHODS_AND_POLICY,
        "image": "The container image (Docker runtime); the process runtime runs container_cmd on the host.",
        "container_cmd": "The command: a string is split into words like docker-compose's `command` "
                         "(no shell); a list is used as is.",
        "container_listeners": "Listener name → the port the DAL listens on inside its container. On the host "
                               "the agent assigns a free port and passes it as `DGW_LISTENER_<NAME>_PORT`.",
        "env": "Environment variables for the DAL (strings, numbers or booleans).",
        "healthcheck": "docker-compose's healthcheck: an unhealthy DAL gets no traffic and is restarted.",
    },
    "Healthcheck": {
        "test": "[CMD, ...], [CMD-SHELL, \"...\"], [NONE], or a string run by the shell.",
        "interval": "Time between checks (10s, 500ms, 1m30s).",
        "timeout": "How long one check may take.",
        "retries": "Consecutive failures before the DAL counts as unhealthy.",
        "start_period": "Grace time after start during which failures do not count.",
        "disable": "Turn the check off.",
    },
    "NetworkDal": {
        **_DAL_METHODS_AND_POLICY,
        "listeners": "Listener name → URL (postgresql://, mysql://, tcp:// for tcp listeners; http://, "
                     "grpc:// for http and grpc ones).",
        "mode": "How Envoy resolves the URL's host: logical_dns, strict_dns, or static (an IP address).",
    },
    "Wiring": {
        "mode": "shadow: the target gets a copy of every request, the client sees only the source's answers; "
                "split: the target gets `percent` of the traffic instead of the source.",
        "target": "The DAL that receives the shadow copy or the split share.",
        "percent": "Share of traffic, 0-100: required for split; for shadow the sampled share (default 100).",
        "traffic": "Which requests on gRPC listeners: all, or writes (the methods not in the DALs' `read_methods`): "
                   "a data migration copies only what changes data.",
        "read_percent": "With shadow and `traffic: writes`: the share of reads (0-100) served by the target "
                        "instead (a migration's promotion steps).",
    },
    "Registration": {
        "address": "One or more discovery names, comma-separated.",
        "mode": "The discovery system.",
    },
    "DeployDesires": {
        "capacity": "The capacity model and the load it is sized for.",
        "service_tier": "0 (most critical) to 9.",
        "version_set": "The artifacts (code, configs) this shard runs, by name.",
        "locations": "Where the shard is deployed.",
        "owners": "Who to reach about the shard.",
        "consumers": "Who may use the shard, and how.",
    },
    "Capacity": {
        "model_name": "The capacity model to size with.",
        "query_pattern": "How the shard is queried.",
        "data_shape": "How much data it holds.",
    },
    "QueryPattern": {
        "access_pattern": "What matters most: latency or throughput.",
        "estimated_read_per_second": "Expected reads per second (low, mid, high).",
        "estimated_write_per_second": "Expected writes per second (low, mid, high).",
    },
    "DataShape": {
        "estimated_state_size_gib": "Expected data size in GiB (low, mid, high).",
        "reserved_instance_app_mem_gib": "Memory reserved for the application on each instance, GiB.",
    },
    "Interval": {
        "low": "Low estimate.",
        "mid": "Most likely value.",
        "high": "High estimate.",
    },
    "VersionSet": {
        "artifacts": "Artifact name → which version of it.",
    },
    "Artifact": {
        "kind": "How the artifact is named: branch, tag, sha or version.",
        "value": "The branch, tag or version.",
        "sha": "The exact commit.",
    },
    "Location": {
        "account": "The cloud account.",
        "regions": "The regions (at least one).",
        "stack": "The stack name within the account.",
    },
    "Owner": {
        "type": "How to reach the owner.",
        "value": "The group, pager, address or channel.",
    },
    "Consumer": {
        "type": "How the consumer is identified.",
        "value": "The consumer's identity.",
        "group": "What it may do: read-write or read-only.",
        "priority": "Its requests' priority under overload: low-priority requests (batch, backfills) are "
                    "shed before high ones. Needs `tls_creds` on the listener (the caller's identity).",
        "may_set_priority": "Whether its `x-dgw-priority: low` header is believed (`load_shedding."
                            "priority_header: trusted`): a caller marks single requests as low priority.",
    },
    "ResilienceSpec": {
        "timeout": "The whole request, retries included (10s, 250ms); 0s: no limit (streaming DALs).",
        "retries": "How failed or slow requests are tried again.",
        "hedging": "Reads only: when a try exceeds its per-try timeout, send another try at once and "
                   "take whichever answers first. Writes are never hedged.",
        "circuit_breakers": "Limits of each DAL cluster; beyond them Envoy answers 503 at once.",
        "outlier_detection": "When an endpoint that keeps failing is taken out of load balancing.",
        "load_shedding": "What a listener refuses at once when overloaded, and who is refused first.",
    },
    "RetriesSpec": {
        "attempts": "Tries after the first (0-10). Reads and idempotent writes are retried on "
                    "failure; other writes only when they never reached the DAL.",
        "per_try_timeout": "The limit of one try; must be less than `timeout`.",
        "budget_percent": "Retries active at once, as a percent of active requests (0-100): "
                          "retries cannot multiply an overload.",
        "min_retry_concurrency": "Retries always allowed at once, whatever the budget.",
    },
    "CircuitBreakersSpec": {
        "max_connections": "Connections to the DAL cluster.",
        "max_pending_requests": "Requests waiting for a connection.",
        "max_requests": "Requests in flight.",
        "max_retries": "Retries in flight; only used when `retries.budget_percent` is 0.",
    },
    "OutlierDetectionSpec": {
        "consecutive_5xx": "Consecutive 5xx answers (gRPC UNAVAILABLE, INTERNAL, UNKNOWN...) that eject an endpoint.",
        "consecutive_gateway_failure": "Consecutive 502/503/504 answers or connection failures that eject an endpoint.",
        "interval": "How often ejections are decided.",
        "base_ejection_time": "How long an endpoint stays out the first time (longer each time again).",
        "max_ejection_percent": "The most endpoints of a cluster out at once, in percent (0-100); "
                                "a cluster with one endpoint may still lose it.",
    },
    "LoadSheddingSpec": {
        "rate_limit": "A local rate limit per listener (absent: none); `null` turns off an inherited one.",
        "adaptive_concurrency": "Envoy's gradient controller: a concurrency limit that follows the DAL's "
                                "latency; requests over it get 503 (gRPC UNAVAILABLE) at once.",
        "low_priority_share": "The share of the circuit breakers' limits (percent) low-priority requests "
                              "may use; they are shed first.",
        "priority_header": "Who may mark a request low priority with `x-dgw-priority: low`: trusted "
                           "(consumers with `may_set_priority`), any (every caller: trusted networks "
                           "only) or off.",
    },
    "RateLimitSpec": {
        "requests_per_second": "Requests admitted per second, sustained; more get 503 with retry-after "
                               "(gRPC RESOURCE_EXHAUSTED).",
        "burst": "Requests admitted at once above the rate (default: a tenth of a second's worth).",
    },
}


def models() -> list[type[BaseModel]]:
    """The models of a shard file, the file itself first, each once, in reading order."""
    seen: list[type[BaseModel]] = []

    def visit(m: type[BaseModel]) -> None:
        if m in seen:
            return
        seen.append(m)
        for field in m.model_fields.values():
            for inner in _models_in(field.annotation):
                visit(inner)

    visit(model.ShardFile)
    return seen


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def shard_schema() -> dict[str, Any]:
    schema = model.ShardFile.model_json_schema()
    for m in models():
        target = schema if m is model.ShardFile else schema["$defs"][m.__name__]
        for key, meaning in MEANINGS.get(m.__name__, {}).items():
            target["properties"][key]["description"] = meaning
    schema["title"] = "Data Gateway shard file"
    schema["description"] = (
        "One shard's runtime config (optionally with deploy_desires). ${VAR} and "
        "${VAR:-default} are interpolated before these rules apply. Generated by "
        "`dgw schema --write` from xds_server/config/model.py."
    )
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is dict:
        return f"map of {_type(args[0])} → {_type(args[1])}"
    if origin in (list, tuple):
        return f"list of {_type(args[0])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(field: Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        return "its defaults" if isinstance(field.default_factory(), BaseModel) else "empty"
    if field.default is None or field.default is PydanticUndefined:
        return "not set"
    return f"`{json.dumps(field.default)}`"


def reference_markdown() -> str:
    lines = [
        "# Shard file reference",
        "",
        "<!-- Generated by `dgw schema --write` from xds_server/config/model.py: do not edit. -->",
        "",
        "A shard is one YAML file, `<shard>.yaml`, in the server's config dir. `${VAR}`,",
        "`${VAR:-default}` and `$$` are interpolated first, as in docker-compose. Unknown keys",
        "are errors. Editors that speak the YAML language server check and complete a file",
        "whose first line is",
        "`# yaml-language-server: $schema=<path to>/schema/shard.schema.json`.",
        "Check a file with `dgw validate FILE`.",
    ]
    for m in models():
        title = "Shard file (top level)" if m is model.ShardFile else m.__name__
        anchor = "" if m is model.ShardFile else f'<a id="{m.__name__.lower()}"></a>'
        lines += ["", f"## {title} {anchor}".rstrip(), ""]
        doc = (m.__doc__ or "").strip()
        if doc and m is not model.ShardFile:
            lines += [" ".join(doc.split()), ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        meanings = MEANINGS.get(m.__name__, {})
        for key, field in m.model_fields.items():
            lines.append(f"| `{key}` | {_type(field.annotation)} | {_default(field)} | {meanings.get(key, '')} |")
    return "\n".join(lines) + "\n"


def schema_text() -> str:
    return json.dumps(shard_schema(), indent=2) + "\n"


def cmd_schema(args: argparse.Namespace) -> int:
    if args.write:
        for path, text in ((SCHEMA_FILE, schema_text()), (REFERENCE_FILE, reference_markdown())):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)
    else:
        sys.stdout.write(reference_markdown() if args.markdown else schema_text())
    return 0


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("schema", help="print the shard file's JSON Schema (or its reference page)")
    p.add_argument("--markdown", action="store_true", help="the reference page (docs/config-reference.md) instead")
    p.add_argument("--write", action="store_true",
                   help="rewrite schema/shard.schema.json and docs/config-reference.md in this checkout")
    p.set_defaults(func=cmd_schema)
