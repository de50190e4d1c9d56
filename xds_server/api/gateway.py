"""``dgw.v1.Gateway``: sidecars report endpoints, watch their shard's config and get
their certificate signed.

Every call is authorized by the caller's certificate (``security.authz``) before its
request is looked at: a gateway reports and watches only as itself; without a
certificate only ``SignCertificate`` with a join token is served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn
from urllib.parse import unquote

import grpc

from common.budget import LogBudget
from common.text import log_value, printable
from dgw_api.v1 import gateway_pb2, gateway_pb2_grpc
from xds_server.security.authz import ControlAuthz, Refusal, describe
from xds_server.security.signing import NodeSigner, SignRefused
from xds_server.shards import Shard, ShardRegistry
from xds_server.store.base import StoreError

log = logging.getLogger("xds_server.api.gateway")

_Context = grpc.aio.ServicerContext[Any, Any]


class GatewayService(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, registry: ShardRegistry, authz: ControlAuthz, signer: NodeSigner | None):
        self.registry = registry
        self.authz = authz
        self.signer = signer
        # Every refusal is logged, within a budget: a bad join token retried in a loop
        # (the join port is open to anyone) must not write a line each time.
        self._refusals = LogBudget(log, "unauthorized_calls")

    async def _check_node(self, context: _Context, call: str, shard: str, node_id: str) -> None:
        caller = self.authz.caller(context)
        refusal = self.authz.node(caller, shard, node_id)
        if refusal is not None:
            await _refuse(context, call, refusal, describe(caller), shard, node_id, self._refusals)

    async def Report(
        self,
        request: gateway_pb2.NodeReport,
        context: grpc.aio.ServicerContext[gateway_pb2.NodeReport, gateway_pb2.ReportAck],
    ) -> gateway_pb2.ReportAck:
        await self._check_node(context, "Report", request.shard, request.node_id)
        try:
            generation = self.registry.report(request, peer_ip(context.peer()))
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
        shard, node_id = request.shard, request.node_id
        caller = self.authz.caller(context)
        ended = asyncio.Event()
        admitted = self.authz.node(caller, shard, node_id) or self.authz.admit(
            caller, shard, node_id, peer_ip(context.peer()), ended.set)
        if isinstance(admitted, Refusal):
            await _refuse(context, "WatchConfig", admitted, describe(caller), shard, node_id, self._refusals)
        log.info("event=config_watch shard=%s node=%s", shard, node_id)
        try:
            async for state in _until(self.registry.watch_config(shard, node_id), ended):
                yield gateway_pb2.ShardConfig(
                    shard=state.name, version=state.config_version, yaml=state.config_yaml,
                    pins=[gateway_pb2.Pin(**state.pins[k].to_json()) for k in sorted(state.pins)],
                )
            why = admitted.ended
            if why is not None:
                await _refuse(context, "WatchConfig", Refusal(why.code, why.message), describe(caller), shard, node_id,
                              self._refusals)
        finally:
            admitted.release()

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
                          request.shard, request.node_id, self._refusals)
        except StoreError as e:  # a join token cannot be spent while etcd is unreachable
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"try again shortly: {e}")
        return gateway_pb2.SignResponse(
            certificate_chain_pem=signed.chain_pem, trust_bundle_pem=signed.bundle_pem
        )


async def _until(states: AsyncIterator[Shard], stop: asyncio.Event) -> AsyncIterator[Shard]:
    """``states`` until ``stop`` is set (a revoked node's watch ends at once)."""
    stopped = asyncio.ensure_future(stop.wait())
    following: asyncio.Future[Shard] | None = None
    try:
        while True:
            following = asyncio.ensure_future(anext(states))
            await asyncio.wait((following, stopped), return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                return
            yield following.result()
    finally:
        stopped.cancel()
        if following is not None and not following.done():
            following.cancel()
            await asyncio.wait((following,))  # the generator must be idle before it is closed
        await states.aclose()  # type: ignore[attr-defined]


async def _refuse(
    context: _Context, call: str, refusal: Refusal, caller: str, shard: str, node_id: str, budget: LogBudget
) -> NoReturn:
    budget.log(
        "event=unauthorized call=%s caller=%s shard=%s node=%s code=%s message=%s",
        call, log_value(caller), log_value(shard), log_value(node_id), refusal.code.name, _quote(refusal.message),
    )
    await context.abort(refusal.code, refusal.message)


def peer_ip(peer: str) -> str:
    """The IP address of a gRPC peer (``ipv4:127.0.0.1:5000``, ``ipv6:%5B::1%5D:5000``);
    a Unix-socket peer is on this host: loopback."""
    kind, _, rest = unquote(peer).partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0].strip("[]")
    return "127.0.0.1" if kind == "unix" else rest


def _quote(text: str) -> str:
    """One quoted token of a log line, whatever ``text`` holds."""
    return '"' + printable(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def register(
    server: grpc.aio.Server, registry: ShardRegistry, authz: ControlAuthz, signer: NodeSigner | None
) -> None:
    gateway_pb2_grpc.add_GatewayServicer_to_server(  # type: ignore[no-untyped-call]
        GatewayService(registry, authz, signer), server
    )
