"""Which documents the control plane installs as CRDs (from `crds/` and --crds)."""

from sbs.e2e import crds, fixtures

CRD = """apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: %s}
"""


def test_crd_documents_reads_every_yaml_in_a_directory_in_order(tmp_path):
    (tmp_path / "b.yaml").write_text(CRD % "b.x.dev")
    (tmp_path / "a.yaml").write_text(CRD % "a.x.dev" + "---\n" + CRD % "a2.x.dev")
    (tmp_path / "notes.txt").write_text(CRD % "ignored.x.dev")
    names = [d["metadata"]["name"] for d in crds.crd_documents([tmp_path])]
    assert names == ["a.x.dev", "a2.x.dev", "b.x.dev"]


def test_crd_documents_skips_other_kinds_and_empty_documents(tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text("---\n" + CRD % "c.x.dev" + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n")
    assert [d["metadata"]["name"] for d in crds.crd_documents([path])] == ["c.x.dev"]


def test_project_crds_are_installed_only_when_crds_dir_has_yaml(monkeypatch, tmp_path):
    monkeypatch.setattr(fixtures, "CRDS_DIR", tmp_path)
    assert fixtures.project_crd_paths() == ()
    (tmp_path / "sbs.dev_sbsdeployments.yaml").write_text(CRD % "sbsdeployments.sbs.dev")
    assert fixtures.project_crd_paths() == (tmp_path,)
