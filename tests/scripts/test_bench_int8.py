"""docs/int8.md says what the README's INT8 commands produce: rerun them verbatim and compare with the page's
first table (scripts/bench_int8.py writes both; issue 23 found them 0.46 point apart)."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_int8_script", ROOT / "scripts" / "bench_int8.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def _doc_rows():
    text = (ROOT / "docs" / "int8.md").read_text()
    section = text.split("## The README's INT8 commands", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].endswith(".onnx"):
            rows[cells[0]] = {"ref": float(cells[1]), "int8": float(cells[2]), "drop": float(cells[3]), "gate": cells[4]}
    return text, section, rows


def test_the_page_quotes_the_readme_commands_it_measured(bench):
    text, section, rows = _doc_rows()
    assert set(rows) == {"model.int8.onnx", "model.int8-cpu.onnx"}
    for cmd in bench.readme_int8_commands():
        assert cmd in section  # the commands measured are the README's, word for word
        assert re.search(r"(^|&& )python ", cmd) is None  # a fresh clone has no bare `python` with the package
    assert "`.venv/bin/python scripts/bench_int8.py`" in text


def test_the_readme_commands_produce_the_pages_figures(bench, tmp_path):
    _, _, rows = _doc_rows()
    rows_now = {}
    for line in bench.readme_rows(bench.readme_int8(tmp_path)):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].endswith(".onnx"):
            rows_now[cells[0]] = {"ref": float(cells[1]), "int8": float(cells[2]), "drop": float(cells[3]),
                                  "gate": cells[4]}
    assert set(rows_now) == set(rows)
    # ONNX Runtime's INT8 kernels differ with VNNI and without (docs/int8.md measured 0.46 point between them): a
    # CPU with the page's VNNI answer must reproduce its figures, any other its verdicts within the gate
    same_kind = _vnni() == re.search(r"AVX-VNNI/AVX512-VNNI: (yes|no)", _doc_rows()[0]).group(1)
    for name, doc in rows.items():
        now = rows_now[name]
        assert now["gate"] == doc["gate"], name
        assert abs(now["ref"] - doc["ref"]) <= 0.1, (name, now, doc)  # FP32 PyTorch: no INT8 kernel involved
        if same_kind:
            assert abs(now["drop"] - doc["drop"]) <= 0.1, (name, now, doc)
        else:
            assert now["drop"] <= 1.0 and abs(now["drop"] - doc["drop"]) <= 1.0, (name, now, doc)


def _vnni() -> str:
    flags = Path("/proc/cpuinfo").read_text()
    return "yes" if ("avx512_vnni" in flags or "avx_vnni" in flags) else "no"
