"""The minimum torch (2.6.0, the first release that fixed CVE-2025-32434) is enforced at run time."""

import re
from pathlib import Path

import pytest
import torch

from autotimm_deploy import AutotimmError, load_model_file
from autotimm_deploy._compat import MIN_TORCH, check_torch_version, parse_version, torch_version_ok
from autotimm_deploy.cli import export as export_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("version, ok", [
    ("2.6.0", True),
    ("2.6", True),
    ("2.6.0+cpu", True),
    ("2.6.0.post1", True),
    ("2.6.1", True),
    ("2.7.0a0+git1234", True),  # a pre-release of a *later* version has the fix
    ("2.14.1+cu130", True),
    ("3.0.0", True),
    ("10.0", True),
    ("v2.8.0", True),
    ("2.6.0a0", False),  # PEP 440: a pre-release precedes its release (as pip reads torch>=2.6)
    ("2.6.0a0+ecf3bae40a", False),
    ("2.6.0rc1", False),
    ("2.6.0.dev20241112+cpu", False),
    ("2.5.1+cu124", False),
    ("2.5.99", False),
    ("1.13.1", False),
    ("2", False),
    ("0.4.1", False),
])
def test_torch_version_ok(version, ok):
    assert torch_version_ok(version) is ok
    if ok:
        check_torch_version(version)
    else:
        with pytest.raises(AutotimmError, match=r"too old.*CVE-2025-32434.*torch>=2\.6\.0"):
            check_torch_version(version)


@pytest.mark.parametrize("version", ["", "unknown", "abc1.2", "nightly"])
def test_unparseable_version_is_refused(version):
    with pytest.raises(ValueError):
        parse_version(version)
    with pytest.raises(AutotimmError, match="cannot tell which torch"):
        check_torch_version(version)


def test_parse_version():
    assert parse_version("2.14.1+cu130") == ((2, 14, 1), False)
    assert parse_version("2.6.0a0") == ((2, 6, 0), True)
    assert parse_version("2.6") == ((2, 6, 0), False)
    assert parse_version("1!2.6.0") == ((2, 6, 0), False)


def test_this_torch_passes():
    check_torch_version()
    assert torch_version_ok(torch.__version__)


def test_minimum_matches_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'"torch>=([\d.]+)"', text)
    assert m and parse_version(m.group(1))[0] == MIN_TORCH


def test_old_torch_refuses_model_files(monkeypatch, tmp_path, small_classifier, capsys):
    from autotimm_deploy import save_model

    path = save_model(small_classifier, tmp_path / "c.pt")
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu124")
    with pytest.raises(AutotimmError, match="torch 2.5.1"):
        load_model_file(path)
    assert export_cli.main([str(path), "--out", str(tmp_path / "out"), "--engine", "none", "--no-check"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "CVE-2025-32434" in err[0]
