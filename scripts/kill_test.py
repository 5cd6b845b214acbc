#!/usr/bin/env python
"""Crash-safety harness: kill ``autotimm-export`` runs with SIGKILL at random points and check the outputs.

    python scripts/kill_test.py [--points 200] [--seed 0] [--json FILE] [--chain 2] [--detector-share 0.2]

Each kill point exports a demo model (``--fp16 --engine tensorrt-rtx``: TensorRT-RTX builds its engine
ahead of time, no GPU needed) into a folder that holds the *previous* complete export (the same model
exported with other flags, so every file's bytes differ), with a per-chain engine cache, and kills the
exporting process with SIGKILL after a delay drawn uniformly over the measured duration of an
uninterrupted run (or, for ``--event-share`` of the points, at a randomly drawn file write: halfway
through writing it, after its fsync before the rename, or right after the rename).  ``--chain K``
kills K runs in a row into the same folder (each starting from what the last one left), then makes
an uninterrupted run.  After every kill:

(a) every non-temporary file in the folder is a complete version: an ONNX file's SHA-256 equals the
    previous or the new reference version; a JSON or Markdown file parses and equals a reference
    version up to numbers, hashes and paths (timings and build times differ run to run); an engine
    matches its sidecar (size + SHA-256, :func:`~autotimm_deploy.engines.load.check_engine`) or, with no
    sidecar, is a known complete engine (a reference run's or the cache's);
(b) if ``manifest.json`` exists, every file it lists exists, matches the SHA-256 it records, and is of
    the manifest's generation (previous or new);
(c) the engine cache holds only valid entries: ``EngineCache.get`` returns complete bytes (a known
    engine) or None, and an entry with both files present is never a mismatched pair;

and after the chain's uninterrupted run (d): it succeeds, its folder passes (a) and (b) with a
manifest of the new generation, and no ``.autotimm-tmp-*`` file is left in the folder, nor in the
cache (the harness ages the cache's leftovers by two hours first: the cache removes only
temporary files older than an hour, so that concurrent writers are not disturbed).

Speed: the parent imports torch and the package once (plus every module an export imports, found by a
first reference run) and ``os.fork()``s one child per run; it never runs a torch op itself, and each
child sets torch to one thread.  A child that outlives 20x the reference duration is reported (a
fork-safety hang).  Exit status 1 if any invariant fails.

Positive control: ``--unsafe-writes`` makes the killed runs write every file in place (no temporary
file, no rename), as a naive exporter would; with ``--event-share 1 --stages mid-write`` every kill
leaves a half-written destination file, and the checker must report it (tests/test_crash_safety.py).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from autotimm_deploy._atomic import TMP_PREFIX  # noqa: E402  (no torch import: the checker runs without it)

#: name -> (demo model, options of the "previous" export, options of the "new" export)
SCENARIOS: Dict[str, Tuple[str, Dict, Dict]] = {
    "classifier": ("classifier", {"batch": (1, 1, 4)}, {"batch": (1, 1, 8)}),
    "detector": ("detector", {"decode": "raw"}, {"decode": "boxes"}),
}
COMMON = {"fp16": True, "engine": "tensorrt-rtx"}
STAGES = ("mid-write", "before-rename", "after-rename")
GENERATIONS = ("prev", "new")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# reference versions and the checker (no torch needed)

_HEX = re.compile(r"\b[0-9a-f]{64}\b")
_NUM = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def normalize(text: str, paths: Tuple[str, ...] = ()) -> str:
    """Text with paths, SHA-256 digests and numbers masked: what is equal between two complete runs."""
    for p in sorted(paths, key=len, reverse=True):
        text = text.replace(p, "<PATH>")
    text = re.sub(r"<PATH>[^\"\s]*", "<PATH>", text)
    # the manifest's model path relative to the export folder depends on where each folder is
    text = re.sub(r'"relative_to_export": "[^"]*"', '"relative_to_export": "<PATH>"', text)
    return _NUM.sub("N", _HEX.sub("<H>", text))


class Refs:
    """Complete versions of every file of one scenario, by generation ("prev", "new"), from reference folders."""

    def __init__(self, paths: Tuple[str, ...] = ()) -> None:
        self.paths = paths  # folder prefixes masked when comparing texts (cache dirs, work dirs)
        self.sha: Dict[str, Dict[str, Set[str]]] = {}  # file name -> generation -> sha256s
        self.norm: Dict[str, Dict[str, Set[str]]] = {}  # file name -> generation -> normalised texts
        self.engines: Dict[str, str] = {}  # sha256 -> generation of complete engines
        self.options: Dict[str, List[Dict]] = {}  # generation -> manifest "options" (cache_dir dropped)

    def add_folder(self, folder: Path, gen: str) -> None:
        for p in sorted(folder.iterdir()):
            if p.name.startswith(TMP_PREFIX) or not p.is_file():
                continue
            data = p.read_bytes()
            self.sha.setdefault(p.name, {}).setdefault(gen, set()).add(sha256(data))
            if p.suffix in (".json", ".md"):
                self.norm.setdefault(p.name, {}).setdefault(gen, set()).add(normalize(data.decode(), self.paths))
            if p.suffix == ".engine":
                self.engines[sha256(data)] = gen
        m = folder / "manifest.json"
        if m.exists():
            self.options.setdefault(gen, []).append(_options(json.loads(m.read_text())))

    def to_dict(self) -> Dict:
        conv = lambda d: {k: {g: sorted(v) for g, v in gens.items()} for k, gens in d.items()}  # noqa: E731
        return {"paths": list(self.paths), "sha": conv(self.sha), "norm": conv(self.norm), "engines": self.engines,
                "options": self.options}


def _options(manifest: Dict) -> Dict:
    return {k: v for k, v in manifest.get("options", {}).items() if k != "cache_dir"}


def _valid_cache_engines(cache_dir: Path) -> Dict[str, str]:
    """sha256 -> key of every cache entry EngineCache.get accepts."""
    from autotimm_deploy.engines.sidecar import EngineCache

    cache = EngineCache(cache_dir, tmp_max_age_s=float("inf"))  # inf: read only, removes nothing
    out = {}
    for p in sorted((cache_dir / "engines").glob("*.engine")) if (cache_dir / "engines").is_dir() else []:
        with contextlib.suppress(ValueError):
            hit = cache.get(p.stem)
            if hit is not None:
                out[sha256(hit[0])] = p.stem
    return out


def check_folder(out: Path, cache_dir: Optional[Path], refs: Refs) -> Tuple[List[str], Dict]:
    """Invariants (a), (b) and, with ``cache_dir``, (c).  Returns (violations, state); ``state`` says what
    the folder held: per file its generation(s) ("prev", "new", both when equal) and the manifest's."""
    from autotimm_deploy.engines.load import check_engine

    bad: List[str] = []
    gens: Dict[str, Set[str]] = {}
    tmp = []
    cache_engines = _valid_cache_engines(cache_dir) if cache_dir is not None else {}
    for p in sorted(out.iterdir()) if out.is_dir() else []:
        if p.name.startswith(TMP_PREFIX):
            tmp.append(p.name)
            continue
        if not p.is_file():
            bad.append(f"(a) {p.name}: not a plain file")
            continue
        data = p.read_bytes()
        digest = sha256(data)
        known = refs.sha.get(p.name)
        if known is None:
            bad.append(f"(a) {p.name}: not a file any complete export writes")
            continue
        by_sha = {g for g, s in known.items() if digest in s}
        if p.suffix == ".onnx":
            if not by_sha:
                why = ""
                try:
                    import onnx

                    onnx.checker.check_model(onnx.load_from_string(data))
                except Exception as exc:  # noqa: BLE001 - only for the message
                    why = f" ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
                bad.append(f"(a) {p.name}: {len(data)} bytes, SHA-256 matches no complete version{why}")
            gens[p.name] = by_sha
        elif p.suffix == ".engine":
            # engine builds are not byte-reproducible: a complete engine is one that matches its sidecar (written
            # after it), a reference run's engine, or a valid cache entry's (the export copies the cache's bytes)
            side = p.with_name(p.name + ".json")
            matched = False
            if side.exists():
                try:
                    check_engine(p)  # size + SHA-256 against the sidecar, magic bytes, library version
                    matched = True
                except Exception as exc:  # noqa: BLE001
                    bad.append(f"(a) {p.name}: does not match its sidecar: {type(exc).__name__}: {exc}")
            if digest in refs.engines:
                gens[p.name] = {refs.engines[digest]}
            elif digest in cache_engines or matched:
                gens[p.name] = {"new"}  # rebuilt by a killed run: not a reference run's bytes
            else:
                if not side.exists():
                    bad.append(f"(a) {p.name}: {len(data)} bytes, no sidecar, and neither a reference engine nor "
                               "one in the cache")
                gens[p.name] = set()
        else:  # .json / .md
            try:
                text = data.decode("utf-8")
                if p.suffix == ".json":
                    json.loads(text)
            except (UnicodeDecodeError, ValueError) as exc:
                bad.append(f"(a) {p.name}: does not parse ({type(exc).__name__}: {str(exc)[:100]})")
                gens[p.name] = set()
                continue
            norm = normalize(text, refs.paths)
            by_norm = {g for g, s in refs.norm.get(p.name, {}).items() if norm in s}
            if not by_sha and not by_norm:
                bad.append(f"(a) {p.name}: {len(data)} bytes, equals no complete version (up to numbers and hashes)")
            # up to numbers a report may equal both generations (prev and new differ only in timings): then it
            # is of either, even when its bytes happen to equal one of them exactly
            gens[p.name] = by_sha | by_norm
    manifest_gen = None
    mpath = out / "manifest.json"
    if mpath.is_file() and not any(m.startswith("(a) manifest.json") for m in bad):
        manifest = json.loads(mpath.read_text())
        opts = _options(manifest)
        mg = {g for g, os_ in refs.options.items() if opts in os_}
        manifest_gen = "/".join(sorted(mg)) or "?"
        if not mg:
            bad.append("(b) manifest.json: options match no reference export")
        for a in manifest.get("artifacts", []):
            f = out / a["file"]
            if not f.is_file():
                bad.append(f"(b) manifest.json lists {a['file']}, which is missing")
                continue
            if "sha256" in a and sha256(f.read_bytes()) != a["sha256"]:
                bad.append(f"(b) manifest.json lists {a['file']} with SHA-256 {a['sha256'][:12]}..., the file has "
                           f"{sha256(f.read_bytes())[:12]}...")
            if mg and a["file"] in gens and gens[a["file"]] and not (gens[a["file"]] & mg):
                bad.append(f"(b) manifest.json ({manifest_gen}) lists {a['file']} of generation "
                           f"{'/'.join(sorted(gens[a['file']]))}")
    if cache_dir is not None:
        bad += check_cache(cache_dir, refs)
    state = {"files": {k: "/".join(sorted(v)) or "?" for k, v in gens.items()}, "tmp": tmp, "manifest": manifest_gen}
    return bad, state


def check_cache(cache_dir: Path, refs: Refs) -> List[str]:
    """(c): every entry is valid or a miss; never a present, mismatched engine + sidecar pair."""
    from autotimm_deploy.engines.sidecar import EngineCache

    bad = []
    edir = cache_dir / "engines"
    if not edir.is_dir():
        return bad
    cache = EngineCache(cache_dir, tmp_max_age_s=float("inf"))
    for p in sorted(edir.iterdir()):
        if p.name.startswith(TMP_PREFIX):
            continue
        if p.name.endswith(".engine.json"):
            try:
                json.loads(p.read_text())
            except ValueError as exc:
                bad.append(f"(c) cache {p.name}: sidecar does not parse ({exc})")
            continue
        if not p.name.endswith(".engine"):
            bad.append(f"(c) cache {p.name}: unexpected file")
            continue
        hit = cache.get(p.stem)
        side = p.with_name(p.name + ".json")
        if hit is None:
            if side.exists():
                bad.append(f"(c) cache {p.name}: engine and sidecar both present but they do not match")
            continue
        data, meta = hit
        if sha256(data) not in refs.engines and (data[:4] != b"vtrt" or len(data) != meta["engine"].get("bytes")):
            bad.append(f"(c) cache {p.name}: get() returned {len(data)} bytes that are not a complete engine")
    return bad


# ----------------------------------------------------------------------------------------------------------
# forked export runs


@contextlib.contextmanager
def _in_place_open(path, mode="wb"):
    """The positive control's writer: straight into the destination file, no temporary file, no rename."""
    with open(path, mode) as f:
        yield f


def _instrument(log, kill_at: Optional[Tuple[int, str]], unsafe_writes: bool = False) -> None:
    """In the child: log every atomic write (begin/end) and, with ``kill_at=(k, stage)``, SIGKILL ourselves
    at the k-th write's ``stage``.  ``unsafe_writes`` (positive control): replace the atomic writer with
    one that writes in place, which the checker must catch."""
    from autotimm_deploy import _atomic

    orig = _in_place_open if unsafe_writes else _atomic.atomic_open
    count = [0]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class Half:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            n = self.f.write(data[: len(data) // 2])
            self.f.flush()
            log("killed mid-write")
            die()
            return n

        def __getattr__(self, name):
            return getattr(self.f, name)

    @contextlib.contextmanager
    def atomic_open(path, mode="wb"):
        count[0] += 1
        name = Path(path).parent.name + "/" + Path(path).name
        stage = kill_at[1] if kill_at is not None and kill_at[0] == count[0] else None
        log(f"write-begin {name}")
        with orig(path, mode) as f:
            yield Half(f) if stage == "mid-write" else f
            if stage == "before-rename":
                f.flush()
                os.fsync(f.fileno())
                log("killed before-rename")
                die()
        log(f"write-end {name}")
        if stage == "after-rename":
            log("killed after-rename")
            die()

    _atomic.atomic_open = atomic_open


def _child(model: str, out: Path, cache: Path, options: Dict, log_path: Path,
           kill_at: Optional[Tuple[int, str]], dump_modules: Optional[Path], unsafe_writes: bool = False) -> None:
    rc = 2
    try:
        fd = os.open(str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(fd, 2)

        def log(text: str) -> None:
            os.write(fd, f"{time.monotonic():.6f} {text}\n".encode())

        log("start")
        import torch

        torch.set_num_threads(1)
        from autotimm_deploy.demo import demo_model_path
        from autotimm_deploy.exporters.pipeline import ExportOptions, export_model

        _instrument(log, kill_at, unsafe_writes)
        opts = ExportOptions(**COMMON, **options, cache_dir=str(cache))
        manifest = export_model(demo_model_path(model), out, opts, progress=lambda s: log("step " + s.strip()))
        log("done")
        if dump_modules is not None:
            dump_modules.write_text("\n".join(sorted(sys.modules)))
        rc = 0 if manifest["parity"]["passed"] else 3
    except BaseException:  # noqa: BLE001 - the child reports and exits, never returns into the parent's code
        with contextlib.suppress(Exception):
            os.write(2, traceback.format_exc().encode())
    finally:
        os._exit(rc)


def fork_run(model: str, out: Path, cache: Path, options: Dict, log_path: Path, delay: Optional[float] = None,
             kill_at: Optional[Tuple[int, str]] = None, timeout: float = 600.0,
             dump_modules: Optional[Path] = None, unsafe_writes: bool = False) -> Dict:
    """Fork a child that exports; SIGKILL it after ``delay`` seconds (None: let it finish).
    Returns {"status": "killed" | "exited", "rc", "seconds", "t0"}."""
    sys.stdout.flush()
    sys.stderr.flush()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(model, out, cache, options, log_path, kill_at, dump_modules, unsafe_writes)
    deadline = t0 + (delay if delay is not None else timeout)
    status = None
    while True:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        now = time.monotonic()
        if now >= deadline:
            break
        time.sleep(min(0.005, deadline - now))
    if status is None:  # still running: kill it (a kill point), or it hung (timeout)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        return {"status": "killed" if delay is not None else "hung", "rc": None, "seconds": time.monotonic() - t0,
                "t0": t0}
    if os.WIFSIGNALED(status):
        return {"status": "killed", "rc": -os.WTERMSIG(status), "seconds": time.monotonic() - t0, "t0": t0,
                "self_killed": kill_at is not None}
    return {"status": "exited", "rc": os.WEXITSTATUS(status), "seconds": time.monotonic() - t0, "t0": t0}


_STEP_PHASES = (("loading", "load"), ("exporting ONNX", "onnx-export"), ("graph surgery", "surgery"),
                ("FP16 ONNX", "fp16"), ("parity vs PyTorch", "parity"), ("building", "engine-build"))


def phase_of(log_path: Path, t_kill: Optional[float]) -> Tuple[str, Optional[str]]:
    """(phase, file) at the kill, from the child's log: the export step, refined to "reports",
    "manifest-write" or "after-manifest" by the file writes; ``file`` is the file being written (for a kill
    right after a rename: the file just renamed), as ``out/NAME`` or ``engines/NAME`` (the cache)."""
    phase, writing, last_written, after_rename = "startup", None, None, False
    log = log_path.read_text(errors="replace") if log_path.exists() else ""  # killed before it opened its log
    for line in log.splitlines():
        parts = line.split(" ", 1)
        try:
            t = float(parts[0])
        except ValueError:
            continue  # a traceback line
        if t_kill is not None and t > t_kill:
            break
        what = parts[1] if len(parts) > 1 else ""
        if what.startswith("step "):
            step = what[5:].split("] ", 1)[-1]
            phase = next((p for key, p in _STEP_PHASES if step.startswith(key)), phase)
        elif what.startswith("write-begin "):
            writing = what.split(" ", 1)[1]
        elif what.startswith("write-end "):
            writing, last_written = None, what.split(" ", 1)[1]
        elif what == "killed after-rename":
            after_rename = True
        elif what == "done":
            phase = "done"
    if phase == "engine-build" and (writing or last_written or "").endswith(("parity.json", "parity.md")):
        phase = "reports"
    if (writing or "").endswith("/manifest.json"):
        phase = "manifest-write"
    elif (last_written or "").endswith("/manifest.json"):
        phase = "after-manifest"
    return phase, writing or (last_written if after_rename else None)


# ----------------------------------------------------------------------------------------------------------
# the harness


def preimport(modules_file: Path) -> Tuple[int, float]:
    """Import in this (parent) process every module an export imported, so children do not pay for it."""
    t = time.time()
    n = 0
    for name in modules_file.read_text().split():
        if name in sys.modules or name.startswith("__") or ".tests" in name:
            continue
        try:
            __import__(name)
            n += 1
        except Exception:  # noqa: BLE001 - an optional module that only imports in some contexts
            pass
    return n, time.time() - t


def _short(written: Optional[str]) -> str:
    """``out/model.onnx`` -> ``model.onnx``; a cache file -> ``cache:engine`` / ``cache:sidecar``."""
    if not written:
        return "-"
    folder, name = written.split("/", 1)
    if folder == "engines":
        return "cache:sidecar" if name.endswith(".json") else "cache:engine"
    return name


def _tmp_files(folder: Path) -> List[Path]:
    return sorted(folder.rglob(TMP_PREFIX + "*")) if folder.is_dir() else []


class Harness:
    def __init__(self, workdir: Path, seed: int = 0, verbose: bool = True, unsafe_writes: bool = False) -> None:
        self.work = workdir
        self.unsafe_writes = unsafe_writes  # positive control: kills get in-place writes (references stay atomic)
        self.rng = random.Random(seed)
        self.verbose = verbose
        self.refs: Dict[str, Refs] = {}
        self.duration: Dict[str, float] = {}  # uninterrupted new run, engine cache miss
        self.duration_hit: Dict[str, float] = {}  # the same with the engine in the cache
        self.new_key: Dict[str, str] = {}  # cache key of the new export's engine
        self.writes: Dict[str, int] = {}
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.nlog = 0
        self.info: Dict = {"unsafe_writes": unsafe_writes}

    def say(self, text: str) -> None:
        if self.verbose:
            print(text, flush=True)

    def _log(self, tag: str) -> Path:
        self.nlog += 1
        return self.logs / f"{self.nlog:04d}-{tag}.log"

    def _run_ok(self, model: str, out: Path, cache: Path, options: Dict, tag: str, **kw) -> Dict:
        log = self._log(tag)
        r = fork_run(model, out, cache, options, log, **kw)
        if r["status"] != "exited" or r["rc"] != 0:
            raise RuntimeError(f"reference run {tag} failed ({r}); log {log}:\n{log.read_text()[-3000:]}")
        r["log"] = log
        return r

    def prepare(self, scenarios: List[str]) -> None:
        """Reference runs: per scenario the previous and the new export (the new one twice: the second is a
        cache hit), the duration of an uninterrupted new run, and its number of file writes."""
        t = time.time()
        mods = self.work / "modules.txt"
        first = True
        for name in scenarios:
            model, prev, new = SCENARIOS[name]
            base = self.work / "refs" / name
            refs = Refs(paths=(str(self.work),))
            self._run_ok(model, base / "prev" / "out", base / "prev" / "cache", prev, f"ref-{name}-prev",
                         dump_modules=mods if first else None)
            if first:
                n, s = preimport(mods)
                self.info["preimported_modules"], self.info["preimport_s"] = n, round(s, 2)
                self.info["parent_threads"] = len(os.listdir("/proc/self/task")) if Path("/proc/self/task").exists() else None
                first = False
            r = self._run_ok(model, base / "new" / "out", base / "new" / "cache", new, f"ref-{name}-new")
            self.duration[name] = r["seconds"]
            self.writes[name] = sum(1 for ln in r["log"].read_text().splitlines() if " write-begin " in ln)
            refs.add_folder(base / "prev" / "out", "prev")
            refs.add_folder(base / "new" / "out", "new")
            r2 = self._run_ok(model, base / "new" / "out", base / "new" / "cache", new, f"ref-{name}-new-hit")
            self.duration_hit[name] = r2["seconds"]
            self.new_key[name] = next(iter(_valid_cache_engines(base / "new" / "cache").values()))
            refs.add_folder(base / "new" / "out", "new")
            for s in _valid_cache_engines(base / "prev" / "cache"):
                refs.engines.setdefault(s, "prev")
            for s in _valid_cache_engines(base / "new" / "cache"):
                refs.engines.setdefault(s, "new")
            self.refs[name] = refs
            (base / "refs.json").write_text(json.dumps(refs.to_dict()))
            self.say(f"reference {name}: uninterrupted run {self.duration[name]:.2f}s (cache hit {r2['seconds']:.2f}s), "
                     f"{self.writes[name]} file writes")
        self.info["prepare_s"] = round(time.time() - t, 1)

    def run(self, points: int, chain: int = 2, detector_share: float = 0.2, event_share: float = 0.25,
            keep_all: bool = False, stages: Tuple[str, ...] = STAGES) -> Dict:
        records: List[Dict] = []
        recoveries: List[Dict] = []
        t_start = time.time()
        c = 0
        while len(records) < points:
            c += 1
            name = "detector" if "detector" in self.refs and (
                self.rng.random() < detector_share or "classifier" not in self.refs) else "classifier"
            model, _, new = SCENARIOS[name]
            refs = self.refs[name]
            d = self.work / "chains" / f"{c:04d}-{name}"
            out, cache = d / "out", d / "cache"
            shutil.copytree(self.work / "refs" / name / "prev" / "out", out)  # the previous complete export
            shutil.copytree(self.work / "refs" / name / "prev" / "cache", cache)
            for k in range(min(chain, points - len(records))):
                rec: Dict = {"point": len(records) + 1, "chain": c, "scenario": name}
                # a killed run may have stored the engine already: then this run is a cache hit, and shorter
                hit = self.new_key[name] in _valid_cache_engines(cache).values()
                duration = self.duration_hit[name] if hit else self.duration[name]
                if self.rng.random() < event_share:
                    at = (self.rng.randint(1, self.writes[name]), self.rng.choice(stages))
                    rec["kill"] = f"write #{at[0]} {at[1]}"
                    log = self._log(f"kill-{rec['point']}")
                    r = fork_run(model, out, cache, new, log, kill_at=at, timeout=20 * self.duration[name] + 30,
                                 unsafe_writes=self.unsafe_writes)
                    t_kill = None
                else:
                    delay = self.rng.uniform(0, duration)
                    rec["kill"] = f"after {delay:.3f}s" + (" (hit)" if hit else "")
                    rec["delay_frac"] = round(delay / duration, 3)
                    log = self._log(f"kill-{rec['point']}")
                    r = fork_run(model, out, cache, new, log, delay=delay, unsafe_writes=self.unsafe_writes)
                    t_kill = r["t0"] + delay
                rec["outcome"] = r["status"] if r["status"] != "exited" else f"finished rc={r['rc']}"
                if r["status"] == "hung":
                    rec["violations"] = [f"child hung (> {20 * self.duration[name] + 30:.0f}s): fork-safety problem?"]
                    rec["phase"] = "hung"
                else:
                    rec["phase"], rec["writing"] = phase_of(log, t_kill)
                    if r["status"] == "exited":
                        rec["phase"] = "finished"
                    bad, state = check_folder(out, cache, refs)
                    rec["violations"], rec["state"] = bad, state
                    rec["cache_tmp"] = len(_tmp_files(cache))
                records.append(rec)
                flag = "OK " if not rec["violations"] else "BAD"
                gens = Counter(rec.get("state", {}).get("files", {}).values())
                self.say(f"[{rec['point']:4d}] {flag} {name:10s} {rec['kill']:26s} {rec['phase']:15s} "
                         f"{_short(rec.get('writing')):24s} manifest={rec.get('state', {}).get('manifest')} "
                         f"files={dict(gens)} tmp={len(rec.get('state', {}).get('tmp', []))}")
                for v in rec["violations"]:
                    self.say(f"       {v}")
            recoveries.append(self.recover(c, name, model, out, cache, new, refs))
            if not keep_all and not recoveries[-1]["violations"] and not any(
                    r["violations"] for r in records if r["chain"] == c):
                shutil.rmtree(d, ignore_errors=True)  # 10 MB a chain; failing ones are kept for inspection
        wall = time.time() - t_start
        return self.summary(records, recoveries, wall)

    def recover(self, c: int, name: str, model: str, out: Path, cache: Path, new: Dict, refs: Refs) -> Dict:
        """(d): an uninterrupted run into the same folder succeeds and leaves no temporary file."""
        old = time.time() - 7200
        aged = _tmp_files(cache)
        for p in aged:  # the cache removes only leftovers older than an hour; make these look old
            os.utime(p, (old, old))
        out_tmp_before = len(_tmp_files(out))
        log = self._log(f"recover-{c}")
        r = fork_run(model, out, cache, new, log, timeout=20 * self.duration[name] + 30)
        bad: List[str] = []
        if r["status"] != "exited" or r["rc"] != 0:
            bad.append(f"(d) the next run failed: {r['status']} rc={r['rc']}; log {log}: "
                       f"{log.read_text(errors='replace')[-800:]}")
        else:
            v, state = check_folder(out, cache, refs)
            bad += [f"(d) {x}" for x in v]
            if state["manifest"] != "new":
                bad.append(f"(d) after the next run the manifest is of generation {state['manifest']}, not new")
            left = _tmp_files(out) + _tmp_files(cache)
            if left:
                bad.append(f"(d) temporary files left after the next run: {[str(p.relative_to(out.parent)) for p in left]}")
        self.say(f"       recovery run {'OK' if not bad else 'BAD'} ({r['seconds']:.2f}s): removed {out_tmp_before} "
                 f"temporary file(s) in the folder and {len(aged)} aged one(s) in the cache")
        for x in bad:
            self.say(f"       {x}")
        return {"chain": c, "scenario": name, "violations": bad, "seconds": round(r["seconds"], 3),
                "out_tmp_removed": out_tmp_before, "cache_tmp_removed": len(aged)}

    def summary(self, records: List[Dict], recoveries: List[Dict], wall: float) -> Dict:
        viol = sum(len(r["violations"]) for r in records) + sum(len(r["violations"]) for r in recoveries)
        killed = [r for r in records if r["outcome"] == "killed"]
        mixed = sum(1 for r in killed if {"prev", "new"} <= set(r.get("state", {}).get("files", {}).values()))
        return {
            "points": len(records),
            "killed": len(killed),
            "finished_before_kill": len(records) - len(killed),
            "survived": sum(1 for r in records if not r["violations"]),
            "violations": viol,
            "recovery_runs": len(recoveries),
            "recovery_ok": sum(1 for r in recoveries if not r["violations"]),
            "phases": dict(Counter(r["phase"] for r in records).most_common()),
            "phases_killed": sorted({r["phase"] for r in killed}),
            "kinds": dict(Counter("event" if r["kill"].startswith("write") else "time" for r in records)),
            "event_kills": dict(Counter(f"{r['kill'].split(' ', 2)[-1]} {_short(r.get('writing'))}"
                                        for r in records if r["kill"].startswith("write") and r["outcome"] == "killed")),
            "manifest_at_kill": dict(Counter(str(r.get("state", {}).get("manifest")) for r in killed)),
            "killed_with_mixed_generations": mixed,
            "scenarios": dict(Counter(r["scenario"] for r in records)),
            "delay_fraction_deciles": dict(sorted(Counter(min(9, int(r["delay_frac"] * 10)) for r in records
                                                          if "delay_frac" in r).items())),
            "reference_seconds": {k: round(v, 3) for k, v in self.duration.items()},
            "reference_seconds_cache_hit": {k: round(v, 3) for k, v in self.duration_hit.items()},
            "writes_per_run": self.writes,
            "wall_s": round(wall, 1),
            **self.info,
            "records": records,
            "recoveries": recoveries,
        }


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--points", type=int, default=200, help="kill points (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the summary and every point here")
    ap.add_argument("--chain", type=int, default=2, help="kills in a row into one folder before the uninterrupted run (default 2)")
    ap.add_argument("--detector-share", type=float, default=0.2, help="share of chains on the demo detector (default 0.2)")
    ap.add_argument("--event-share", type=float, default=0.25,
                    help="share of points killed at a random file write instead of a random time (default 0.25)")
    ap.add_argument("--stages", default=",".join(STAGES),
                    help=f"write stages an event kill picks from (default {','.join(STAGES)})")
    ap.add_argument("--unsafe-writes", action="store_true",
                    help="positive control: the killed runs write files in place instead of atomically; the "
                         "checker must report violations (exit status 1)")
    ap.add_argument("--scenarios", default="classifier,detector")
    ap.add_argument("--workdir", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work folder (reference exports, logs, folders of chains with a violation)")
    ap.add_argument("--keep-all", action="store_true", help="also keep the folders of chains without a violation")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="autotimm-kill-test-"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.time()
    try:
        stages = tuple(s for s in args.stages.split(",") if s)
        if not stages or set(stages) - set(STAGES):
            ap.error(f"--stages: choose from {','.join(STAGES)}")
        h = Harness(work, args.seed, verbose=not args.quiet, unsafe_writes=args.unsafe_writes)
        h.prepare([s for s in args.scenarios.split(",") if s])
        res = h.run(args.points, chain=max(1, args.chain), detector_share=args.detector_share,
                    event_share=args.event_share, keep_all=args.keep_all, stages=stages)
        res["total_wall_s"] = round(time.time() - t, 1)
        res["args"] = {k: str(v) for k, v in vars(args).items()}
        res["workdir"] = str(work)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str) + "\n")
    brief = {k: v for k, v in res.items() if k not in ("records", "recoveries")}
    print(json.dumps(brief, indent=1, default=str))
    print(f"\n{res['survived']}/{res['points']} kill points survived ({res['killed']} killed, "
          f"{res['finished_before_kill']} finished first), {res['recovery_ok']}/{res['recovery_runs']} recovery runs OK, "
          f"{res['violations']} violation(s); phases {res['phases']}; {res['total_wall_s']}s")
    return 0 if res["violations"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
