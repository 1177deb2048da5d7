"""The tools module's go.mod: derived replace lines, pins, cache keys (no network, no Go)."""

import pytest
from sbs.e2e import binaries

K8S_GOMOD = """module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
\tk8s.io/klog/v2 v2.130.1
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tk8s.io/streaming => ./staging/src/k8s.io/streaming
)
"""


def make_tools_gomod(staging: list[str], version: str = "v0.36.3") -> str:
    pins = binaries.Pins(kubernetes="v1.36.3", etcd="v3.6.16", kwok="v0.8.0")
    text = binaries.render_gomod(pins, staging, "1.26.0", ["default=go1.26"])
    if version != pins.staging_version:
        text = text.replace(f" {pins.staging_version}\n", f" {version}\n")
    return text + (
        "require (\n\tgo.etcd.io/etcd/server/v3 v3.6.16 // indirect\n"
        "\tk8s.io/kubernetes v1.36.3 // indirect\n\tsigs.k8s.io/kwok v0.8.0 // indirect\n)\n"
    )


def test_staging_modules_are_read_from_the_release_gomod():
    assert binaries.staging_modules(K8S_GOMOD) == ["k8s.io/api", "k8s.io/client-go", "k8s.io/streaming"]


def test_single_line_replace_directives_count_too():
    assert binaries.staging_modules("replace k8s.io/kms => ./staging/src/k8s.io/kms\n") == ["k8s.io/kms"]


def test_gomod_directives_copy_go_and_godebug():
    assert binaries.gomod_directives(K8S_GOMOD) == ("1.26.0", ["default=go1.26"])


@pytest.mark.parametrize(
    ("kubernetes", "staging"), [("v1.36.3", "v0.36.3"), ("v1.35.10", "v0.35.10")], ids=["1.36", "1.35"]
)
def test_staging_version_follows_the_release(kubernetes, staging):
    assert binaries.staging_version(kubernetes) == staging


def test_staging_version_rejects_a_non_release():
    with pytest.raises(binaries.BuildError, match="must look like"):
        binaries.staging_version("v1.36.3-rc.0")


def test_rendered_gomod_pins_every_staging_module_and_names_every_tool():
    text = make_tools_gomod(["k8s.io/api", "k8s.io/client-go"])
    assert binaries.replaced_modules(text) == {"k8s.io/api": "v0.36.3", "k8s.io/client-go": "v0.36.3"}
    for pkg in binaries.COMMANDS.values():
        assert f"\t{pkg}\n" in text
    assert text.startswith(binaries.GENERATED_HEADER)


def test_read_pins_from_require_lines():
    pins = binaries.read_pins(make_tools_gomod(["k8s.io/api"]))
    assert pins == binaries.Pins(kubernetes="v1.36.3", etcd="v3.6.16", kwok="v0.8.0")


def test_stale_replaces_reports_missing_extra_and_wrong_versions():
    text = make_tools_gomod(["k8s.io/api", "k8s.io/kubelet"], version="v0.36.1")
    assert binaries.stale_replaces(text, K8S_GOMOD) == [
        "missing replace for k8s.io/client-go",
        "missing replace for k8s.io/streaming",
        "replace for k8s.io/kubelet is not a staging module",
        "k8s.io/api is replaced by v0.36.1, expected v0.36.3",
    ]


def test_matching_replaces_are_not_stale():
    text = make_tools_gomod(["k8s.io/api", "k8s.io/client-go", "k8s.io/streaming"])
    assert binaries.stale_replaces(text, K8S_GOMOD) == []


def test_committed_tools_module_is_consistent():
    text = (binaries.TOOLS_DIR / "go.mod").read_text()
    pins = binaries.read_pins(text)
    replaced = binaries.replaced_modules(text)
    assert len(replaced) >= 30  # every staging module of the release (33 for 1.36)
    assert set(replaced.values()) == {pins.staging_version}
    for pkg in binaries.COMMANDS.values():
        assert f"\t{pkg}\n" in text
    assert (binaries.TOOLS_DIR / "go.sum").stat().st_size > 0


@pytest.mark.parametrize(
    ("version", "minor"), [("go1.26.8", "1.26"), ("1.26.5", "1.26"), ("go1.27.3", "1.27")]
)
def test_go_minor(version, minor):
    assert binaries.go_minor(version) == minor


def test_cache_key_names_versions_and_changes_with_gosum():
    pins = binaries.Pins(kubernetes="v1.36.3", etcd="v3.6.16", kwok="v0.8.0")
    a = binaries.cache_key(pins, "go1.26.8", "mod", "sum")
    assert a.startswith("k8s-v1.36.3_etcd-v3.6.16_kwok-v0.8.0_go1.26.8_")
    assert a != binaries.cache_key(pins, "go1.26.8", "mod", "sum2")
    assert a != binaries.cache_key(pins, "go1.26.9", "mod", "sum")


def test_kubernetes_ldflags_stamp_the_release():
    flags = " ".join(binaries.kubernetes_ldflags("v1.36.3"))
    assert "-X k8s.io/component-base/version.gitVersion=v1.36.3" in flags
    assert "-X k8s.io/component-base/version.gitMinor=36" in flags


def test_cache_root_honours_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("SBS_E2E_CACHE", str(tmp_path / "c"))
    assert binaries.cache_root() == tmp_path / "c"
    monkeypatch.delenv("SBS_E2E_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert binaries.cache_root() == tmp_path / "sbs-e2e"


def test_an_incomplete_cache_directory_is_not_a_build(tmp_path):
    bins = binaries.Binaries(tmp_path)
    (tmp_path / "bin").mkdir()
    for name in binaries.COMMANDS:
        (tmp_path / "bin" / name).write_text("")
    assert not bins.is_complete()  # no stages, no build.json
