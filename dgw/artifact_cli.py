"""``dgw artifact push|list|show``: the artifact index that version sets resolve through.

``push`` records a build of a DAL artifact: a locally built Docker image (its image ID,
read from the local engine; nothing is pulled or pushed to a registry) or a process
DAL's files (the SHA-256 of the files its command runs, as the sidecar's process
runtime computes it: ``common.digests``), under refs (``--branch main`` by default).
Shards whose version set names that ref take the build when a version of theirs is
stored next, or when a rollout re-resolves them.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from common.digests import DigestError, command_files, files_digest
from dgw.client import Client, ClientError
from dgw.ops import _client_options, _run, emit, table


def _image_digest(image: str) -> str:
    import docker
    import docker.errors

    try:
        client = docker.from_env(timeout=10)
        try:
            return str(client.images.get(image).id)
        finally:
            client.close()
    except docker.errors.ImageNotFound:
        raise ClientError(f"--image {image}: no such image on this host's Docker engine (docker images)") from None
    except docker.errors.DockerException as e:
        raise ClientError(f"--image {image}: the Docker engine does not answer ({e})") from None


def build_of(args: argparse.Namespace) -> dict[str, str]:
    """The build to push: its digest, kind and where it is found."""
    try:
        if args.image:
            return {"digest": _image_digest(args.image), "kind": "image", "source": args.image}
        if args.files:
            paths = [Path(f).resolve() for f in args.files]
            return {"digest": files_digest(paths), "kind": "files", "source": " ".join(map(str, paths))}
        words = shlex.split(args.command)
        paths = command_files(words)
        if not paths:
            raise ClientError(f"--command {args.command!r} names no file (its first word is looked up on PATH)")
        return {"digest": files_digest(paths), "kind": "files", "source": " ".join(map(str, paths))}
    except (DigestError, ValueError) as e:
        raise ClientError(str(e)) from None


def cmd_push(args: argparse.Namespace, client: Client) -> int:
    refs = [f"branch/{b}" for b in args.branch or []] + [f"tag/{t}" for t in args.tag or []]
    refs += [f"version/{v}" for v in args.version or []]
    body = {**build_of(args), "refs": refs or ["branch/main"]}
    kind, _, name = args.artifact.partition("/")
    data = client.request("POST", f"/v1/artifacts/{kind}/{name}", body).body
    emit(args, data, lambda d: f"{d['artifact']}: {body['digest']} as {', '.join(body['refs'])} "
                               f"({len(d['builds'])} builds)")  # fmt: skip
    return 0


def _render_list(data: Any) -> str:
    rows = [[a["artifact"], ", ".join(f"{r}={d[:19]}" for r, d in a["refs"].items()), a["builds"],
             (a.get("latest") or {}).get("pushed_at", "")[:19].replace("T", " ")] for a in data["artifacts"]]  # fmt: skip
    return table(["ARTIFACT", "REFS", "BUILDS", "LAST PUSH"], rows) if rows else "no artifacts yet: dgw artifact push"


def _render_one(data: Any) -> str:
    head = f"{data['artifact']}: " + (", ".join(f"{r} → {d[:19]}" for r, d in data["refs"].items()) or "no refs")
    rows = [[b["digest"][:19], b["kind"], b["source"][:50], ", ".join(b["refs"]), b["pushed_by"],
             b["pushed_at"][:19].replace("T", " ")] for b in reversed(data["builds"])]  # fmt: skip
    return head + "\n" + table(["DIGEST", "KIND", "SOURCE", "PUSHED AS", "BY", "AT"], rows)


def cmd_list(args: argparse.Namespace, client: Client) -> int:
    emit(args, client.get("/v1/artifacts"), _render_list)
    return 0


def cmd_show(args: argparse.Namespace, client: Client) -> int:
    kind, _, name = args.artifact.partition("/")
    emit(args, client.get(f"/v1/artifacts/{kind}/{name}"), _render_one)
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("artifact", help="the artifact index version sets resolve through (push, list, show)")
    asub = p.add_subparsers(dest="artifact_command", required=True, metavar="push|list|show")
    push = asub.add_parser("push", help="record a locally built image, or a process DAL's files, as a build")
    push.add_argument("artifact", help="dals/NAME: the DALs whose image is NAME (or named NAME) run it")
    what = push.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="a local Docker image (its ID is the digest); hosts find it by this name")
    what.add_argument("--files", nargs="+", metavar="FILE", help="the files a process DAL's command runs, in its order")
    what.add_argument("--command", help="a process DAL's container_cmd: its files are found as the sidecar finds them")
    push.add_argument("--branch", action="append", help="move this branch to the build (default: main)")
    push.add_argument("--tag", action="append", help="tag the build (repeatable)")
    push.add_argument("--version", action="append", help="name the build's version (repeatable)")
    _client_options(push)
    push.set_defaults(func=_run(cmd_push))
    c = asub.add_parser("list", help="every artifact and its refs")
    _client_options(c)
    c.set_defaults(func=_run(cmd_list))
    c = asub.add_parser("show", help="one artifact's builds, newest first")
    c.add_argument("artifact")
    _client_options(c)
    c.set_defaults(func=_run(cmd_show))
