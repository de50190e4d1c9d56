"""``dgw ca init`` and ``dgw ca issue``: the local certificate authority from the shell.

The CA lives in ``DATA_DIR/ca`` (``ca.key`` 0600, ``ca.crt``), the server's data
directory (``--data-dir``, else ``$DGW_DATA_DIR``, else ``$XDG_DATA_HOME/dgw``, else
``~/.local/share/dgw``). ``issue`` makes a demo or application certificate: the key is
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

if TYPE_CHECKING:  # cryptography loads only when a ca command runs: `dgw --help` stays quick
    from xds_server.security.ca import CertificateAuthority

CA_SUBDIR = "ca"
DEFAULT_ISSUE_TTL = "24h"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
BUNDLE_FILE = "bundle.pem"


def ca_dir(data_dir: Path | None) -> Path:
    """Where the CA of a server with this ``--data-dir`` lives. Without one: the
    default data dir's, or else that of the ``dgw up`` run from this directory (so a
    demo needs no flag)."""
    if data_dir is not None:
        return data_dir / CA_SUBDIR
    from .client import local_data_dirs

    candidates = [d / CA_SUBDIR for d in local_data_dirs()]
    return next((c for c in candidates if (c / "ca.crt").exists()), candidates[0])


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

    directory = ca_dir(args.data_dir)
    try:
        ca = CertificateAuthority.init(directory, trust_domain=args.trust_domain)
    except (CaError, IdentityError) as e:
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
        directory = ca_dir(args.data_dir)
        if not (directory / CA_CERT_FILE).exists():
            raise CaError(f"no CA in {directory}: run `dgw ca init --data-dir {directory.parent}` first")
        ca = CertificateAuthority.load(directory)
        identity = parse_identity(args.identity, ca.trust_domain)
        paths = issue(ca, identity, args.out, ttl)
    except (CaError, IdentityError) as e:
        print(f"dgw ca issue: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"dgw ca issue: --ttl: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"dgw ca issue: --out {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"identity:    {identity}")
    for kind, path in paths.items():
        print(f"{kind + ':':<12} {path}")
    return 0


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = sub.add_parser("ca", help="the local certificate authority: create it, issue client certificates")
    commands = ca.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    data_dir_help = ("the server's data directory; the CA is DATA_DIR/ca (default: $DGW_DATA_DIR, else "
                     "~/.local/share/dgw, else the one of `dgw up` run from here: .work/up/server)")

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
