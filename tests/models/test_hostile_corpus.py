"""Every hostile or broken model file of ``hostile_corpus.py`` is refused with one clear line.

For each case: ``load_model_file`` raises :class:`ModelFileError` whose one-line message names the
offending global or the problem; ``autotimm-export`` exits with 2 and prints exactly that line (no
traceback); the payload's canary file never appears; and no network connection or DNS lookup is even
attempted.  Payloads marked live are shown to fire under an unsafe loader (positive control).
"""

import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import re

import pytest
import torch

from autotimm_deploy import ModelFileError, load_model_file
from autotimm_deploy.cli import export as export_cli

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]


def _import_corpus():
    # tests run with --import-mode=importlib: import the sibling generator by path
    name = "autotimm_deploy_tests_hostile_corpus"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("hostile_corpus.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


hc = _import_corpus()
_PROGRESS = re.compile(r"^\s*\d+\.\ds \[\d+/\d+\] ")  # autotimm-export's timed step lines ("  0.0s [1/4] loading ...")


def _error_lines(stderr: str):
    """stderr without the progress lines; a refusal leaves exactly one line here."""
    return [line for line in stderr.splitlines() if line.strip() and not _PROGRESS.match(line)]
NAMES = [n for n in hc.CASE_NAMES if os.name == "posix" or n not in hc.POSIX_ONLY]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    cases = {c.name: c for c in hc.make_corpus(d)}
    yield cases
    for c in cases.values():  # checked again after every test of the module has run
        assert c.canary is None or not c.canary.exists(), f"{c.name}: the payload ran"


@pytest.fixture
def no_network(monkeypatch):
    """Record and refuse every connection or name lookup; the test asserts the record stays empty."""
    attempts = []

    def refuse(what):
        def f(*args, **kwargs):
            attempts.append((what, args[1:2] if what == "socket.connect" else args[:1]))
            raise OSError(f"network access attempted in a test: {what}")
        return f

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))
    return attempts


def test_corpus_is_complete(corpus):
    assert list(corpus) == NAMES and len(NAMES) >= 16
    assert sum(c.canary is not None for c in corpus.values()) >= 3


@pytest.mark.parametrize("name", NAMES)
def test_load_refuses_with_one_clear_line(corpus, no_network, name):
    case = corpus[name]
    with pytest.raises(ModelFileError) as info:
        load_model_file(case.path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(case.path)), msg
    for needle in case.expect:
        assert needle in msg, f"{name}: {needle!r} not in {msg!r}"
    assert "weights_only=False" not in msg and "Weights only load failed" not in msg, msg
    assert no_network == [], f"{name}: network access attempted: {no_network}"
    assert case.canary is None or not case.canary.exists()


@pytest.mark.parametrize("name", NAMES)
def test_cli_exits_2_with_one_line(corpus, no_network, capsys, tmp_path, name):
    case = corpus[name]
    out = tmp_path / "out"
    rc = export_cli.main([str(case.path), "--out", str(out), "--engine", "none", "--no-check"])
    captured = capsys.readouterr()
    lines = _error_lines(captured.err)
    assert rc == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("autotimm-export: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    for needle in case.expect:
        assert needle in lines[0]
    assert not any(out.glob("*.onnx"))
    assert no_network == []
    assert case.canary is None or not case.canary.exists()


_GUARD = '''
import socket, os
_log = os.environ["AUTOTIMM_TEST_NET_LOG"]
def _refuse(what):
    def f(*a, **k):
        with open(_log, "a") as fh:
            fh.write(what + "\\n")
        raise OSError("network access attempted: " + what)
    return f
socket.socket.connect = _refuse("socket.connect")
socket.socket.connect_ex = _refuse("socket.connect_ex")
socket.create_connection = _refuse("socket.create_connection")
socket.getaddrinfo = _refuse("socket.getaddrinfo")
'''


@pytest.mark.parametrize("name", ["reduce_os_system", "marshal_functiontype"])
def test_cli_subprocess(corpus, tmp_path, name):
    """The installed ``autotimm-export`` in a fresh process: exit 2, one line on stderr, no canary, no network."""
    exe = Path(sys.executable).with_name("autotimm-export")
    if not exe.exists():
        exe = ROOT / ".venv" / "bin" / "autotimm-export"
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(_GUARD)  # imported at start-up: every socket call is logged, refused
    log = tmp_path / "net.log"
    env = dict(os.environ, PYTHONPATH=str(guard), AUTOTIMM_TEST_NET_LOG=str(log), HF_HUB_OFFLINE="0")
    case = corpus[name]
    proc = subprocess.run([str(exe), str(case.path), "--out", str(tmp_path / "out"), "--engine", "none"],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = _error_lines(proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("autotimm-export: error: "), proc.stderr
    assert all(n in lines[0] for n in case.expect), lines[0]
    assert not case.canary.exists()
    assert not log.exists(), f"network access attempted: {log.read_text()}"


@pytest.mark.parametrize("name", [n for n in NAMES if n in ("reduce_os_system", "reduce_builtins_exec",
                                                              "marshal_functiontype")])
def test_payloads_are_live(tmp_path, name):
    """Positive control: under an unsafe loader the payload *does* create its canary (in a scratch corpus),
    so the "canary never appears" checks above test something real."""
    case = {c.name: c for c in hc.make_corpus(tmp_path)}[name]
    assert case.live and not case.canary.exists()
    try:
        torch.load(case.path, weights_only=False)  # deliberately unsafe: our own payload, in tmp_path
    except Exception:
        pass  # some payloads leave the unpickler with an odd object; the side effect is what counts
    assert case.canary.exists(), f"{name}: payload did not fire, the canary checks would prove nothing"


def _digests(d: Path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())
            if p.is_file() and not p.is_symlink() and p.stat().st_size and p.suffix in (".pt", ".safetensors")
            and p.stem not in hc.NOT_BYTE_STABLE}


def test_corpus_is_deterministic(tmp_path):
    """The generator gives the same bytes in a fresh process with another hash seed (no blobs, no clock)."""
    d = tmp_path / "corpus"
    hc.make_corpus(d)
    first = _digests(d)
    shutil.rmtree(d)
    env = dict(os.environ, PYTHONHASHSEED="123", PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, str(Path(__file__).with_name("hostile_corpus.py")), str(d)], check=True,
                   capture_output=True, env=env, timeout=300)
    assert _digests(d) == first and len(first) >= 15


def test_corpus_figures(corpus, no_network, reliability_record):
    """The corpus's figures for docs/reliability.md: every case refused, none crashed, no canary, no network."""
    refused, other = [], []
    for name, case in corpus.items():
        try:
            load_model_file(case.path)
            other.append(f"{name}: loaded")
        except ModelFileError as exc:
            refused.append({"case": name, "message": str(exc).replace(str(case.path), "<file>")})
        except BaseException as exc:  # anything but the one user-facing error type is a defect
            other.append(f"{name}: {type(exc).__name__}")
    assert other == [] and len(refused) == len(corpus)
    fired = [c.name for c in corpus.values() if c.canary is not None and c.canary.exists()]
    assert fired == [] and no_network == []
    reliability_record("hostile_model_files", {
        "cases": len(corpus), "refused": len(refused), "crashed_or_other_error": 0, "canaries": sum(
            c.canary is not None for c in corpus.values()), "canaries_fired": 0, "network_attempts": 0,
        "cli_exit_code": 2, "messages": refused})
