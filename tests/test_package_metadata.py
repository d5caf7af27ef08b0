"""The package metadata a package index shows: a licence (the project's and the bundled data's), classifiers,
and the project links."""
import email
import re
from pathlib import Path

from setuptools import build_meta

ROOT = Path(__file__).resolve().parents[1]


def test_metadata_names_the_licences_classifiers_and_links(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    dist_info = build_meta.prepare_metadata_for_build_wheel(str(tmp_path))
    meta = email.message_from_string((tmp_path / dist_info / "METADATA").read_text())
    assert meta["License-Expression"] == "MIT"
    assert set(meta.get_all("License-File")) == {"LICENSE", "medix_r1/data/pubmedqa/LICENSE"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    classifiers = meta.get_all("Classifier")
    assert any(c.startswith("Programming Language :: Python :: 3.1") for c in classifiers)
    assert any(c.startswith("Topic :: Scientific/Engineering") for c in classifiers)
    assert any("github.com/mbzuai-oryx/MediX-R1" in url for url in meta.get_all("Project-URL"))
    # the long description is the README with no link whose target only exists in the repository
    body = meta.get_payload()
    assert meta["Description-Content-Type"].startswith("text/markdown") and "## Two commands" in body
    targets = re.findall(r"\]\(([^)\s]+)\)", body)
    assert targets and all(t.startswith("https://") for t in targets), [t for t in targets if "://" not in t]
    assert "docs/install.md" in body  # the path is still named
