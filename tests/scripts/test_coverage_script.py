"""scripts/coverage.py: the sampling rule (on the committed sample, never redrawn here), the selections, the KNOWN
gate, the cause normaliser, the report, and real entries through the whole pipeline (one detector, one classifier,
one backbone that cannot work recorded as a failure with its reason, not a crash)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
SCRIPT = SCRIPTS / "coverage.py"
SAMPLE = SCRIPTS / "coverage_sample.json"


@pytest.fixture(scope="module")
def coverage():
    spec = importlib.util.spec_from_file_location("coverage_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve the module's annotations through sys.modules
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def sample():
    assert SAMPLE.exists(), "scripts/coverage_sample.json is committed (python scripts/coverage.py --resample --dry-run)"
    return json.loads(SAMPLE.read_text())


def _meta(**kw):
    return {"date": "today", "command": "test", "machine": "m", "versions": {}, "timeout_s": 1, "selection": "test",
            "wall_s": 1.0, "gpu": None, **kw}


def test_curated_list_covers_the_required_families(coverage, sample):
    families = {b.family for b in coverage.BACKBONES}
    required = {"resnet", "resnext", "seresnext", "efficientnet", "mobilenetv3", "mobilenetv4", "convnext", "regnet",
                "densenet", "cspdarknet", "ghostnet", "repvgg", "hrnet"}
    assert required <= families
    assert all(b.hw[0] % 32 == 0 and b.hw[1] % 32 == 0 for b in coverage.BACKBONES)
    curated_known = {("detection", "vit_tiny_patch16_224")}  # cspdarknet53 passes FP16 now (docs/coverage.md)
    assert curated_known <= set(coverage.KNOWN) and all(coverage.KNOWN.values())  # a known failure says why
    assert {t for t, _ in coverage.KNOWN} <= {"detection", "classification"}
    assert sum(b.kind != "CNN" and ("detection", b.model) not in coverage.KNOWN for b in coverage.BACKBONES) >= 2
    curated = coverage.select(list_name="curated", sample=sample)
    assert [e.model for e in curated] == [b.model for b in coverage.BACKBONES]
    assert {e.task for e in curated} == {"detection"}


def test_sample_is_the_rule_applied_to_timm(coverage, sample):
    assert sample["timm"] and sample["rule"] == coverage.SAMPLE_RULE and sample["size_cap_m"] == coverage.SIZE_CAP_M
    cap = sample["size_cap_m"] * 1e6
    assert sample["counts"] == coverage.sample_counts(sample)
    for fam, rec in sample["families"].items():
        cands = rec["candidates"]
        assert all("." not in n for n in list(cands) + list(rec["not_built"]))  # no pretrained tags
        if rec["status"] == "not constructible":
            assert not cands and rec["reason"]
            continue
        assert rec["model"] == min(cands, key=lambda n: (cands[n], n)), fam  # the smallest of its family
        assert rec["params"] == cands[rec["model"]]
        assert (rec["status"] == "over the size cap") == (rec["params"] > cap), fam
        if rec["status"] == "ok":
            assert rec["features_only"] is True and rec["feature_strides"]
        if rec["status"] in ("ok", "no features_only"):
            det, cls = rec["detection_input"], rec["classification_input"]
            assert all(v % 32 == 0 for v in det), fam
            capped = [min(v, coverage.INPUT_CAP) for v in rec["default_input"]]
            assert cls == (capped if rec["input_cap"] == "applied" else rec["default_input"]), fam  # as is
            if rec["input_cap"] != "applied" and not str(rec["input_cap"]).startswith("not accepted"):
                assert max(rec["default_input"]) <= coverage.INPUT_CAP and max(det) < coverage.INPUT_CAP + 32


def test_seeded_sample_is_deterministic(coverage, sample):
    eligible = coverage.eligible_families(sample)
    assert eligible == sorted(f for f, r in sample["families"].items() if r["status"] == "ok")
    order = coverage.seeded_order(sample, 0)
    assert order == coverage.seeded_order(sample, 0) and sorted(order) == eligible
    assert coverage.seeded_order(sample, 1) != order
    entries = coverage.select(n=60, seed=0, sample=sample)
    n = min(60, len(eligible))
    assert [e.family for e in entries if e.task == "detection"] == order[:n]
    assert [e.family for e in entries if e.task == "classification"] == order[:n]
    assert entries == coverage.select(n=60, seed=0, sample=sample)
    for e in entries:
        rec = sample["families"][e.family]
        assert e.model == rec["model"] and list(e.hw) == rec[f"{e.task}_input"]
    every = coverage.select(all_families=True, task="classification", sample=sample)
    assert sorted(e.family for e in every) == eligible and {e.task for e in every} == {"classification"}


def test_ci_subset_has_both_tasks_and_the_curated_subset(coverage, sample):
    ci = coverage.select("ci", sample=sample)
    first = coverage.seeded_order(sample, 0)[:coverage.CI_SAMPLE]
    for task in ("detection", "classification"):
        assert [e.family for e in ci if e.task == task and e.kind == ""] == first
    assert set(coverage.CI_SUBSET) <= {e.model for e in ci if e.task == "detection"}
    assert len({(e.task, e.model, e.hw) for e in ci}) == len(ci)


def test_only_names_with_task(coverage, sample):
    fam = coverage.eligible_families(sample)[0]
    got = coverage.select(only=f"resnet18,{fam}", task="both", sample=sample)
    assert [(e.task, e.model) for e in got] == [("detection", "resnet18"), ("detection", sample["families"][fam]["model"]),
                                               ("classification", "resnet18"),
                                               ("classification", sample["families"][fam]["model"])]
    assert got[0].hw == (128, 128)


def test_known_table_gates(coverage):
    known = {("detection", "bad_net"): "documented cause"}
    res = {"task": "detection", "model": "bad_net", "ok": False}
    assert coverage.verdict(res, known) == "known failure"
    assert coverage.exit_code([res], known=known) == 0
    assert coverage.verdict({**res, "ok": True}, known) == "unexpected pass"
    assert coverage.exit_code([{**res, "ok": True}], known=known) == 1
    new = {"task": "classification", "model": "bad_net", "ok": False}  # same model, other task: not known
    assert coverage.verdict(new, known) == "FAIL"
    assert coverage.exit_code([res, new], known=known) == 1
    assert coverage.exit_code([res, new], gate=False, known=known) == 0
    assert coverage.verdict({"task": "detection", "model": "good", "ok": True}, known) == "pass"
    assert coverage.verdict({"task": "detection", "model": "vit_tiny_patch16_224", "ok": False}) == "known failure"


def test_cause_normaliser_groups_messages_differing_in_numbers_and_names(coverage):
    norm = coverage.report.normalise_cause
    a = ("build: ValueError: backbone 'vit_tiny_patch16_224' has feature levels with strides [16, 16, 16]; "
         "the FPN needs levels at strides [8, 16, 32]")
    b = ("build: ValueError: backbone 'deit_small_patch16_224' has feature levels with strides [14, 14, 14, 14]; "
         "the FPN needs levels at strides [8, 16, 32]")
    assert norm(a) == norm(b) and norm(a).startswith("build: ValueError: backbone <name> has feature levels")
    c = "export: RuntimeError: shape mismatch at /model/backbone/stages_3/Add_12 (1, 28, 28, 192) vs 0.25"
    d = "export: RuntimeError: shape mismatch at /model/backbone/blocks.7/Mul (2, 14, 14, 96) vs 1e-3"
    assert norm(c) == norm(d)
    assert norm(a) != norm(c) and norm("export: " + a.split(": ", 1)[1]) != norm(a)  # the stage is part of the key
    assert norm("timeout: no result after 300 s (killed)") == norm("timeout: no result after 45 s (killed)")
    rows = [{"ok": False, "reason": a, "model": "x"}, {"ok": False, "reason": b, "model": "y"},
            {"ok": False, "reason": c, "model": "z"}, {"ok": True, "model": "w"}]
    groups = coverage.report.group_causes(rows)
    assert [len(g) for _, g in groups] == [2, 1]


def test_report_rates_groups_and_fp16_list(coverage):
    def row(task, model, fp32=True, fp16=True, constructed=True, reason=None, **kw):
        p = lambda ok, e: {"passed": ok, "errors": {"logits": e}, "worst_output": "logits", "worst_err": e,  # noqa
                           "worst_atol": 0.05, "failed_outputs": [] if ok else ["logits"], "summary": f"logits err {e}"}
        built = constructed and reason is None
        return {"family": model, "model": model, "task": task, "kind": "", "input": [64, 64], "note": "",
                "ok": built and fp32 and fp16, "constructed": constructed, "export_ok": built, "stage": "done",
                "reason": reason, "problems": [] if fp16 or not built else ["FP16 parity failed"],
                "params_m": 1.0 if constructed else None,
                "fp32": p(fp32, 1e-6) if built else None, "fp16": p(fp16, 0.2 if not fp16 else 0.01) if built else None,
                "engine": None, "seconds": 1.0, **kw}

    results = [row("classification", "a"), row("classification", "b", fp16=False),
               row("detection", "c"), row("detection", "d", constructed=False, reason="build: ValueError: no 'd' 8")]
    md = coverage.render(results, _meta())
    assert "| classification | 2 | 2 | 2/2 (100 %) | 1/2 (50 %) |" in md
    assert "| detection | 2 | 1 | 1/1 (100 %) |" in md
    assert "## Failures grouped by cause" in md and "parity: FP16 parity failed (logits)" in md
    fp16 = md.split("## FP16 failures")[1]
    assert "`b`" in fp16 and "worst `logits` err 0.2" in fp16 and "`d`" not in fp16


def test_merge_renders_one_report_from_kept_folders_and_json(coverage, tmp_path):
    """--merge: results of a stopped run (its kept result.json files) and of a --json file in one report, in the
    selection's order, the entries with no result listed as not run."""
    import json

    def res(task, model):
        return {"family": model, "model": model, "task": task, "kind": "", "input": [64, 64], "note": "", "ok": True,
                "constructed": True, "export_ok": True, "stage": "done", "reason": None, "problems": [],
                "params_m": 1.0, "fp32": None, "fp16": None, "engine": None, "seconds": 2.0}

    kept = tmp_path / "kept"
    for model in ("resnet18", "efficientnet_b0"):
        (kept / f"det-{model}").mkdir(parents=True)
        (kept / f"det-{model}" / "result.json").write_text(json.dumps(res("detection", model)))
    (tmp_path / "more.json").write_text(json.dumps({"meta": {}, "results": [res("detection", "convnext_atto")]}))
    out = tmp_path / "merged.md"
    rc = coverage.main(["--list", "curated", "--merge", str(kept), str(tmp_path / "more.json"), "--out", str(out),
                        "--json", str(tmp_path / "merged.json")])
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert [r["model"] for r in merged["results"]] == ["resnet18", "efficientnet_b0", "convnext_atto"]  # list order
    assert len(merged["meta"]["not_run"]) == len(coverage.select("full", list_name="curated")) - 3
    assert merged["meta"]["wall_s"] == 6.0 and rc == 0
    assert "**Not run**" in out.read_text()


def test_resnet18_detector_passes_export_parity_and_engine_build(coverage, tmp_path):
    res = coverage.run_entry(coverage.Entry("resnet", "resnet18", size=64), tmp_path)
    assert res["reason"] is None, res["reason"]
    assert res["ok"] and res["export_ok"] and res["constructed"] and res["stage"] == "done"
    assert 11 < res["params_m"] < 13
    assert res["fp32"]["passed"] and res["fp32"]["boxes_err"] < 1e-2 and res["fp32"]["scores_err"] < 1e-4
    assert res["fp16"]["passed"] and res["fp16"]["boxes_err"] < 1.0
    eng = res["engine"]
    assert eng["built"] and eng["bytes"] > 0 and eng["build_s"] > 0
    assert (tmp_path / "export" / eng["file"]).stat().st_size == eng["bytes"]
    assert eng["status"] in ("not executed", "pass")
    assert coverage.verdict(res) == "pass"
    assert coverage.report._engine_cell(eng).startswith("built, ")


def test_classifier_entry_passes_fp32_parity_on_logits(coverage, tmp_path):
    e = coverage.Entry("mobilenetv3", "mobilenetv3_small_050", size=64, task="classification")
    res = coverage.run_entry(e, tmp_path)
    assert res["constructed"] and res["export_ok"], res["reason"]
    assert res["task"] == "classification" and res["input"] == [64, 64]
    assert res["fp32"]["passed"] and set(res["fp32"]["errors"]) == {"logits"}
    assert res["fp32"]["worst_output"] == "logits" and 0 <= res["fp32"]["logits_err"] < 1e-3
    assert res["fp16"] is not None and res["engine"]["built"]
    md = coverage.render([res], _meta())
    assert "## Classification" in md and "pass (logits " in md


def test_backbone_without_stride8_level_is_a_recorded_failure(coverage, tmp_path):
    res = coverage.run_entry(coverage.Entry("vit", "vit_tiny_patch16_224", size=224, kind="transformer"), tmp_path)
    assert not res["ok"] and not res["export_ok"] and not res["constructed"]  # must not raise
    assert res["stage"] == "build"
    assert "strides" in res["reason"] and "ValueError" in res["reason"]
    assert coverage.verdict(res) == "known failure"
    assert coverage.verdict(res, known={}) == "FAIL"
    md = coverage.render([res], _meta())
    assert "strides" in md and "## Failures grouped by cause" in md and "0 passed / 1" in md
    assert "| detection | 1 | 0 |" in md


def test_only_takes_an_input_size_per_name(coverage, sample):
    entries = coverage.select(only="resnet18@96,spnasnet_100@224", task="classification", sample=sample)
    assert [(e.model, e.hw, e.task) for e in entries] == [("resnet18", (96, 96), "classification"),
                                                          ("spnasnet_100", (224, 224), "classification")]
