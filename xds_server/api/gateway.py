"""``dgw.v1.Gateway``: sidecars report endpoints and watch their shard's config."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from dgw_api.v1 import gateway_pb2, gateway_pb2_grpc
from xds_server.shards import ShardRegistry

log = logging.getLogger("xds_server.api.gateway")


class GatewayService(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, registry: ShardRegistry):
        self.registry = registry

    async def Report(
        self,
        request: gateway_pb2.NodeReport,
        context: grpc.aio.ServicerContext[gateway_pb2.NodeReport, gateway_pb2.ReportAck],
    ) -> gateway_pb2.ReportAck:
        try:
            generation = self.registry.report(request)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return gateway_pb2.ReportAck(generation=generation)

    async def WatchConfig(
        self,
        request: gateway_pb2.WatchRequest,
        context: grpc.aio.ServicerContext[gateway_pb2.WatchRequest, gateway_pb2.ShardConfig],
    ) -> AsyncIterator[gateway_pb2.ShardConfig]:
        # The sidecar runs the DALs, so it gets the config with interpolated values
        # resolved; only views for people (admin API, logs) mask them.
        if not request.shard:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "WatchConfig needs a shard")
        log.info("event=config_watch shard=%s node=%s", request.shard, request.node_id)
        async for state in self.registry.watch_config(request.shard):
            yield gateway_pb2.ShardConfig(
                shard=state.name, version=state.config_version, yaml=state.config_yaml
            )


def register(server: grpc.aio.Server, registry: ShardRegistry) -> None:
    gateway_pb2_grpc.add_GatewayServicer_to_server(  # type: ignore[no-untyped-call]
        GatewayService(registry), server
    )
