"""The artifact index and version-set resolution (pure): pushes move refs, a version
set resolves to pins, and what does not resolve is a problem at its key path."""

from __future__ import annotations

import pytest

from xds_server.config.model import ContainerDal, VersionSet
from xds_server.deploy.artifacts import (
    MAX_BUILDS,
    Artifact,
    ArtifactError,
    Build,
    config_version,
    decode,
    encode,
    image_repository,
    pin_for_dal,
    push,
    record_name,
    resolve,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def build(digest: str, *refs: str, source: str = "dgw-kv:1") -> Build:
    return Build(digest, "image", source, "2026-01-01T00:00:00+00:00", "tester", refs)


def one(key: str, **ref: str) -> VersionSet:
    return VersionSet.model_validate({"artifacts": {key: ref}})


def test_a_push_moves_its_refs_and_keeps_the_others():
    a = push(None, "dals/dgw-kv", build(D1, "branch/main", "tag/v1"))
    a = push(a, "dals/dgw-kv", build(D2, "branch/main"))
    assert a.refs == {"branch/main": D2, "tag/v1": D1}
    assert [b.digest for b in a.builds] == [D1, D2]
    assert decode(encode(a)) == a


def test_pushing_a_build_again_merges_its_refs():
    a = push(None, "dals/x", build(D1, "branch/main"))
    a = push(a, "dals/x", build(D1, "tag/v2"))
    assert [b.refs for b in a.builds] == [("branch/main", "tag/v2")]


def test_old_builds_go_and_refs_to_them_with_them():
    a = push(None, "dals/x", build(D1, "tag/first"))
    for i in range(MAX_BUILDS):
        a = push(a, "dals/x", build(f"sha256:{i:064x}", "branch/main"))
    assert len(a.builds) == MAX_BUILDS
    assert "tag/first" not in a.refs


@pytest.mark.parametrize("key", ["dgw-kv", "images/kv", "dals/", "dals/a/b", "configs/-x"])
def test_bad_artifact_names_are_refused(key: str):
    with pytest.raises(ArtifactError, match="dals/IMAGE"):
        record_name(key)


def test_bad_digests_and_refs_are_refused():
    with pytest.raises(ArtifactError, match="sha256:<64 hex"):
        push(None, "dals/x", build("sha256:abc"))
    with pytest.raises(ArtifactError, match="branch/NAME"):
        push(None, "dals/x", build(D1, "main"))


def test_branch_tag_version_and_sha_resolve_to_digests():
    index = {"dals/dgw-kv": push(push(None, "dals/dgw-kv", build(D1, "branch/main", "tag/v1", "version/1.0")),
                                 "dals/dgw-kv", build(D2, "branch/main"))}
    for kind, value, digest in (("branch", "main", D2), ("tag", "v1", D1), ("version", "1.0", D1)):
        pins, problems = resolve(one("dals/dgw-kv", kind=kind, value=value), index, "c", "f.yaml")
        assert problems == []
        assert pins["dals/dgw-kv"].digest == digest
        assert pins["dals/dgw-kv"].source == "dgw-kv:1"
    vs = VersionSet.model_validate({"artifacts": {"dals/dgw-kv": {"kind": "sha", "value": D1[7:20]}}})
    pins, problems = resolve(vs, index, "c", "f.yaml")
    assert problems == [] and pins["dals/dgw-kv"].digest == D1


def test_unknown_artifacts_refs_and_shas_are_problems_at_their_key_paths():
    index = {"dals/dgw-kv": push(None, "dals/dgw-kv", build(D1, "branch/main"))}
    vs = VersionSet.model_validate({"artifacts": {
        "dals/nope": {"kind": "branch", "value": "main"},
        "dals/dgw-kv": {"kind": "branch", "value": "release"},
        "images/x": {"kind": "tag", "value": "v1"},
    }})
    pins, problems = resolve(vs, index, "c", "f.yaml")
    assert pins == {}
    lines = sorted(str(p) for p in problems)
    assert lines[0].startswith("f.yaml:deploy_desires.version_set.artifacts.dals/dgw-kv.value: dals/dgw-kv has no branch 'release' (branches: main)")
    assert lines[1].startswith("f.yaml:deploy_desires.version_set.artifacts.dals/nope: no artifact dals/nope in the artifact index (artifacts: dals/dgw-kv)")
    assert lines[2].startswith("f.yaml:deploy_desires.version_set.artifacts.images/x: 'images/x' is not an artifact name")
    vs = VersionSet.model_validate({"artifacts": {"dals/dgw-kv": {"kind": "branch", "value": "main", "sha": "3" * 12}}})
    _, problems = resolve(vs, index, "c", "f.yaml")
    assert [p.path for p in problems] == ["deploy_desires.version_set.artifacts.dals/dgw-kv.sha"]
    assert "is no build of it" in problems[0].message


def test_a_sha_never_pushed_to_the_named_branch_is_refused():
    a = push(push(None, "dals/x", build(D1, "branch/dev")), "dals/x", build(D2, "branch/main"))
    vs = VersionSet.model_validate({"artifacts": {"dals/x": {"kind": "branch", "value": "main", "sha": D1}}})
    _, problems = resolve(vs, {"dals/x": a}, "c", "f.yaml")
    assert "was never pushed to branch 'main'" in problems[0].message


def test_the_config_artifact_is_the_files_own_version():
    text = "proxy_config: {}\n"
    own = config_version(text)
    ok = VersionSet.model_validate({"artifacts": {"configs/main": {"kind": "branch", "sha": own}}})
    pins, problems = resolve(ok, {}, own, "f.yaml")
    assert problems == [] and pins["configs/main"].digest == own and pins["configs/main"].kind == "config"
    other = VersionSet.model_validate({"artifacts": {"configs/main": {"kind": "branch", "sha": "0123abc"}}})
    _, problems = resolve(other, {}, own, "f.yaml")
    assert problems[0].path == "deploy_desires.version_set.artifacts.configs/main.sha"
    assert "${DGW_CONFIG_VERSION}" in problems[0].message


def test_held_pins_are_kept_without_the_index():
    index: dict[str, Artifact] = {}
    vs = VersionSet.model_validate({"artifacts": {"dals/x": {"kind": "branch", "value": "main"}}})
    held = resolve(vs, {"dals/x": push(None, "dals/x", build(D1, "branch/main"))}, "c", "f")[0]
    pins, problems = resolve(vs, index, "c", "f", held)
    assert problems == [] and pins == held


@pytest.mark.parametrize(("image", "repo"), [("dgw-kv", "dgw-kv"), ("dgw-kv:1", "dgw-kv"),
                                             ("reg:5000/team/dgw-kv:1", "dgw-kv"), ("x@sha256:ab", "x")])
def test_an_image_is_matched_by_its_repository(image: str, repo: str):
    assert image_repository(image) == repo


def test_a_dal_gets_the_pin_of_its_image_or_of_its_name():
    vs = VersionSet.model_validate({"artifacts": {"dals/dgw-kv": {"kind": "branch", "value": "main"},
                                                  "dals/proc": {"kind": "branch", "value": "main"}}})
    index = {"dals/dgw-kv": push(None, "dals/dgw-kv", build(D1, "branch/main")),
             "dals/proc": push(None, "dals/proc", build(D2, "branch/main", source="/bin/dal"))}
    pins, _ = resolve(vs, index, "c", "f")
    assert pin_for_dal(pins, "cql", ContainerDal(image="dgw-kv:test")).digest == D1
    assert pin_for_dal(pins, "proc", ContainerDal(container_cmd="/bin/dal")).digest == D2
    assert pin_for_dal(pins, "other", ContainerDal(image="other")) is None
