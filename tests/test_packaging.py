"""Every package folder is listed in pyproject (a non-editable install would silently drop it otherwise)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, mapping = set(tool["packages"]), tool["package-dir"]
    found = set()
    for top_name, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([top_name, *relative.parts]))
    missing = sorted(found - listed)
    assert not missing, f"packages missing from pyproject [tool.setuptools] packages: {missing}"


def test_the_default_expert_set_is_package_data():
    from vlamergebench.eval.run import DEFAULT_EXPERTS

    assert DEFAULT_EXPERTS == ROOT / "vlamergebench" / "default_experts_v2"
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    folder = ROOT / "vlamergebench" / "default_experts_v2"
    files = {path for path in folder.rglob("*") if path.is_file() and "__pycache__" not in path.parts}
    assert files, f"{folder} holds no files"
    shipped = {path for pattern in patterns["vlamergebench"] for path in folder.parent.glob(pattern)}
    dropped = sorted(str(path.relative_to(ROOT)) for path in files - shipped)
    assert not dropped, f"files a wheel would leave out: {dropped}"


def test_license_and_citation_agree_with_pyproject():
    import tomllib

    import yaml

    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    citation = yaml.safe_load((root / "CITATION.cff").read_text())
    assert (root / "LICENSE").read_text().startswith("MIT License") and project["license"]["text"] == "MIT"
    assert citation["cff-version"] == "1.2.0" and citation["license"] == "MIT"
    assert citation["version"] == project["version"] and citation["title"].startswith("vlamergebench")
