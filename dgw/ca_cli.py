"""``dgw ca init`` and ``dgw ca issue``: the local certificate authority from the shell.

The CA lives in ``DATA_DIR/ca`` (``ca.key`` 0600, ``ca.crt``), the server's data
directory: ``--data-dir``'s, else the context's (``ca:``; ``dgw up`` selects its own
instance's), else the default data dir's (``$DGW_DATA_DIR``, else ``$XDG_DATA_HOME/dgw``,
else ``~/.local/share/dgw``). ``issue`` says which CA it used. ``issue`` makes a demo or application certificate: the key is
generated here, written 0600 and never printed; only paths and the SPIFFE ID are shown.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from xds_server.config.model import parse_duration
from xds_server.security.identity import IdentityError, SpiffeId, consumer_id, parse_spiffe_id

from .contexts import ContextError

if TYPE_CHECKING:  # cryptography loads only when a ca command runs: `dgw --help` stays quick
    from xds_server.security.ca import CertificateAuthority

CA_SUBDIR = "ca"
DEFAULT_ISSUE_TTL = "24h"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
BUNDLE_FILE = "bundle.pem"


def ca_dir(data_dir: Path | None, context: str | None = None) -> tuple[Path, str]:
    """Where the CA lives, and why there: ``--data-dir``'s; else the context's
    (``--context``, ``$DGW_CONTEXT`` or the current one: ``dgw up`` selects its own);
    else the default data dir's."""
    from xds_server.store.data_dir import default_data_dir

    from .contexts import load, selected

    if data_dir is not None:
        return data_dir / CA_SUBDIR, f"--data-dir {data_dir}"
    contexts = load()
    name, _ = selected(contexts, context)
    ca = contexts.contexts[name].path("ca") if name else None
    if name and ca is not None:
        return ca.parent, f"context {name}"
    where = default_data_dir()
    return where / CA_SUBDIR, f"the default data dir {where}" + (f" (context {name} names no CA)" if name else "")


def parse_identity(text: str, trust_domain: str) -> SpiffeId:
    """``ACCOUNT-APP`` (the seed's consumers) or a whole ``spiffe://TD/ACCOUNT/APP``."""
    if text.startswith("spiffe://"):
        return parse_spiffe_id(text)
    return consumer_id("account-app", text, trust_domain)


def issue(ca: CertificateAuthority, identity: SpiffeId, out: Path, ttl: dt.timedelta) -> dict[str, Path]:
    """A new key (0600) and its certificate for ``identity`` in ``out``, with the CA's
    bundle next to them; the paths by kind."""
    from common.files import write_private
    from xds_server.security.keys import make_csr, new_private_key, private_key_pem

    key = new_private_key()
    chain = ca.sign(make_csr(key, identity), identity, lifetime=ttl)
    paths = {"certificate": out / CERT_FILE, "key": out / KEY_FILE, "bundle": out / BUNDLE_FILE}
    write_private(paths["key"], private_key_pem(key))
    paths["certificate"].write_bytes(chain)
    paths["bundle"].write_bytes(ca.bundle_pem)
    return paths


def cmd_init(args: argparse.Namespace) -> int:
    from xds_server.security.ca import CA_CERT_FILE, CaError, CertificateAuthority

    try:
        directory, _ = ca_dir(args.data_dir, args.dgw_context)
        ca = CertificateAuthority.init(directory, trust_domain=args.trust_domain)
    except (CaError, IdentityError, ContextError) as e:
        print(f"dgw ca init: {e}", file=sys.stderr)
        return 1
    print(f"CA created: {directory / CA_CERT_FILE} (trust domain {ca.trust_domain}; key 0600 beside it)")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    from xds_server.security.ca import CA_CERT_FILE, CaError, CertificateAuthority

    try:
        ttl = dt.timedelta(seconds=parse_duration(args.ttl))
        if ttl.total_seconds() <= 0:
            raise ValueError("--ttl must be more than 0, e.g. 24h")
        directory, why = ca_dir(args.data_dir, args.dgw_context)
        if not (directory / CA_CERT_FILE).exists():
            raise CaError(f"no CA in {directory} ({why}): run `dgw ca init --data-dir {directory.parent}` "
                          "first, or pick the context of a running server (`dgw config get-contexts`)")
        ca = CertificateAuthority.load(directory)
        identity = parse_identity(args.identity, ca.trust_domain)
        paths = issue(ca, identity, args.out, ttl)
    except (CaError, IdentityError, ContextError) as e:
        print(f"dgw ca issue: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"dgw ca issue: --ttl: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"dgw ca issue: --out {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"identity:    {identity}")
    print(f"issuer:      {directory / CA_CERT_FILE} ({why})")
    for kind, path in paths.items():
        print(f"{kind + ':':<12} {path}")
    return 0


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = sub.add_parser("ca", help="the local certificate authority: create it, issue client certificates")
    commands = ca.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    data_dir_help = ("the server's data directory; the CA is DATA_DIR/ca (default: the context's CA "
                     "(`dgw up` selects its own), else $DGW_DATA_DIR/ca, else ~/.local/share/dgw/ca)")

    p = commands.add_parser("init", help="create the CA (EC P-256; key 0600)")
    p.add_argument("--data-dir", type=Path, default=None, help=data_dir_help)
    p.add_argument("--trust-domain", default="dgw.local", help="the SPIFFE trust domain (default: %(default)s)")
    p.set_defaults(func=cmd_init)

    p = commands.add_parser(
        "issue", help="a client certificate for an application identity (key made here, 0600)",
        description="Issue a certificate for ACCOUNT-APP (spiffe://TD/ACCOUNT/APP) from the local CA: "
                    "writes cert.pem, key.pem (0600) and bundle.pem to --out and prints their paths.",
    )
    p.add_argument("--identity", required=True, metavar="ACCOUNT-APP",
                   help="a consumer as in deploy_desires (e.g. prod-api), or spiffe://TD/ACCOUNT/APP")
    p.add_argument("--out", type=Path, required=True, help="directory for cert.pem, key.pem, bundle.pem")
    p.add_argument("--ttl", default=DEFAULT_ISSUE_TTL, help="lifetime, e.g. 1h, 24h (default: %(default)s)")
    p.add_argument("--data-dir", type=Path, default=None, help=data_dir_help)
    p.set_defaults(func=cmd_issue)
