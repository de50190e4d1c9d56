"""``dgw.v1.Gateway``: sidecars report endpoints, watch their shard's config and get
their certificate signed.

Every call is authorized by the caller's certificate (``security.authz``) before its
request is looked at: a gateway reports and watches only as itself; without a
certificate only ``SignCertificate`` with a join token is served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from dgw_api.v1 import gateway_pb2, gateway_pb2_grpc
from xds_server.security.authz import ControlAuthz, Refusal, describe
from xds_server.security.signing import NodeSigner, SignRefused
from xds_server.shards import ShardRegistry
from xds_server.store.base import StoreError

log = logging.getLogger("xds_server.api.gateway")

_Context = grpc.aio.ServicerContext[Any, Any]


class GatewayService(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, registry: ShardRegistry, authz: ControlAuthz, signer: NodeSigner | None):
        self.registry = registry
        self.authz = authz
        self.signer = signer

    async def _check_node(self, context: _Context, call: str, shard: str, node_id: str) -> None:
        caller = self.authz.caller(context)
        refusal = self.authz.node(caller, shard, node_id)
        if refusal is not None:
            await _refuse(context, call, refusal, describe(caller), shard, node_id)

    async def Report(
        self,
        request: gateway_pb2.NodeReport,
        context: grpc.aio.ServicerContext[gateway_pb2.NodeReport, gateway_pb2.ReportAck],
    ) -> gateway_pb2.ReportAck:
        await self._check_node(context, "Report", request.shard, request.node_id)
        try:
            generation = self.registry.report(request)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return gateway_pb2.ReportAck(generation=generation)

    async def ReportStats(
        self,
        request: gateway_pb2.EnvoyStats,
        context: grpc.aio.ServicerContext[gateway_pb2.EnvoyStats, gateway_pb2.ReportAck],
    ) -> gateway_pb2.ReportAck:
        await self._check_node(context, "ReportStats", request.shard, request.node_id)
        try:
            self.registry.report_stats(request, time.time())
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return gateway_pb2.ReportAck()

    async def WatchConfig(
        self,
        request: gateway_pb2.WatchRequest,
        context: grpc.aio.ServicerContext[gateway_pb2.WatchRequest, gateway_pb2.ShardConfig],
    ) -> AsyncIterator[gateway_pb2.ShardConfig]:
        # The sidecar runs the DALs, so it gets the config with interpolated values
        # resolved; only views for people (admin API, logs) mask them.
        if not request.shard:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "WatchConfig needs a shard")
        await self._check_node(context, "WatchConfig", request.shard, request.node_id)
        log.info("event=config_watch shard=%s node=%s", request.shard, request.node_id)
        async for state in self.registry.watch_config(request.shard, request.node_id):
            yield gateway_pb2.ShardConfig(
                shard=state.name, version=state.config_version, yaml=state.config_yaml,
                pins=[gateway_pb2.Pin(**state.pins[k].to_json()) for k in sorted(state.pins)],
            )

    async def SignCertificate(
        self,
        request: gateway_pb2.SignRequest,
        context: grpc.aio.ServicerContext[gateway_pb2.SignRequest, gateway_pb2.SignResponse],
    ) -> gateway_pb2.SignResponse:
        caller = self.authz.caller(context)
        if self.signer is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "this server runs --insecure: it has no CA and signs no certificates")
        try:
            signed = self.signer.sign(
                request.shard, request.node_id, request.csr_pem, request.join_token, caller
            )
        except SignRefused as e:
            await _refuse(context, "SignCertificate", Refusal(e.code, e.message), describe(caller),
                          request.shard, request.node_id)
        except StoreError as e:  # a join token cannot be spent while etcd is unreachable
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"try again shortly: {e}")
        return gateway_pb2.SignResponse(
            certificate_chain_pem=signed.chain_pem, trust_bundle_pem=signed.bundle_pem
        )


async def _refuse(
    context: _Context, call: str, refusal: Refusal, caller: str, shard: str, node_id: str
) -> NoReturn:
    log.warning(
        "event=unauthorized call=%s caller=%s shard=%s node=%s code=%s message=%s",
        call, caller, shard[:253], node_id[:253], refusal.code.name, _quote(refusal.message),
    )
    await context.abort(refusal.code, refusal.message)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def register(
    server: grpc.aio.Server, registry: ShardRegistry, authz: ControlAuthz, signer: NodeSigner | None
) -> None:
    gateway_pb2_grpc.add_GatewayServicer_to_server(  # type: ignore[no-untyped-call]
        GatewayService(registry, authz, signer), server
    )
