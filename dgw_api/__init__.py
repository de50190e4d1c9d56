"""The ``dgw.v1`` API between the sidecar and the xds_server (generated from
``protos/dgw_api/v1/gateway.proto``; the proto package stays ``dgw.v1``)."""
