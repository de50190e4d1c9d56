"""Workload identities and the local certificate authority (issue #13's foundation).

- ``identity``: SPIFFE IDs — gateways are ``spiffe://TD/gateway/SHARD``, the seed's
  ``account-app`` consumers are ``spiffe://TD/ACCOUNT/APP``.
- ``keys``: a private key and a CSR, made on the host that will use them; the key never
  leaves that host (the model of Istio's node agent and SPIRE's agent).
- ``ca``: the control plane's CA; it signs short-lived leaf certificates from CSRs for
  the identity *it* decides, never the one a CSR asks for.
"""
