"""The benchmark scripts run (tiny settings) and print what they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_runs_tiny_on_cpu():
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_imagebind_huge.py"),
            "--tiny",
            "--dpc",
            "1,2",
            "--steps",
            "1",
            "--num-freqs",
            "256",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["preset"] == "imagebind_tiny" and report["device"] == "CPU"
    assert [row["dpc"] for row in report["rows"]] == [1, 2]
    assert all(row["seconds_per_class_step"] > 0 and row["peak_memory_gib"] > 0 for row in report["rows"])
    assert [row["modality"] for row in report["embed"]] == ["image", "audio", "text"]
    assert all(row["rows_per_second"] > 0 for row in report["embed"])


@pytest.mark.slow
def test_paper_table_quick_runs_and_renders(tmp_path, fsdd_source):
    """The paper-table script end to end on tiny fsdd-mnist: selection on val, the test table, --render."""
    out = tmp_path / "table.json"
    env = {**os.environ, "IBDC_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "paper_table.py"), "--quick", "--source", str(fsdd_source)]
    command += ["--parts", "select,ablation,methods", "--dpcs", "1", "--ablation-dpcs", "1", "--json", str(out)]
    command += ["--methods", "random,dm,imagebinddc"]  # every method's selection: the next test
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    entry = report["encoders"]["random"]
    select, ablation, methods = entry["select"], entry["ablation"], entry["methods"]
    assert select["split"] == ablation["split"] == "val" and methods["split"] == "test"
    assert set(select["best"]) == {"random", "dm", "imagebinddc"}
    assert len(ablation["rows"]) >= 10 and set(select["whole"]) == {"whiten", "center", "none"}
    rows = methods["rows"]
    assert set(rows) == {*select["best"], "imagebinddc --preset paper"}
    for method, by_dpc in rows.items():  # each baseline ran under the space map chosen for it on val
        expected = "none" if "paper" in method else select["best"][method]["1"]
        assert by_dpc["1"]["space_map"] == expected and 0 <= by_dpc["1"]["mean"] <= 100
    rendered = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "paper_table.py"), "--render", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert "| imagebinddc |" in rendered.stdout and "whole data" in rendered.stdout
    assert "**val** split" in rendered.stdout and "**test** split" in rendered.stdout
    assert "Ablation on the val split" in rendered.stdout
    # --resume keeps every measured cell: a second run measures nothing and reports the same numbers
    again = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(out.read_text())["encoders"]["random"]["methods"]["rows"] == rows


def test_selection_never_reads_the_test_split(digits, tmp_path, monkeypatch):
    """The select part runs with the test store replaced by a file that raises on any read."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    monkeypatch.setattr(sys, "path", sys.path)
    import paper_table

    import ibdc_cli.condense
    import ibdc_cli.evaluation
    import ibdc_cli.evaluation.protocol
    import ibdc_cli.store

    poison = tmp_path / "test-store"
    poison.write_text("reading the test split during selection")
    real_open = ibdc_cli.store.open_store

    def guarded_open(path, *args, **kwargs):
        if Path(path).resolve() == poison.resolve():
            raise AssertionError("the selection read the test store")
        return real_open(path, *args, **kwargs)

    for module in (ibdc_cli.store, ibdc_cli.evaluation, ibdc_cli.evaluation.protocol, ibdc_cli.condense):
        monkeypatch.setattr(module, "open_store", guarded_open)
    stores = {"train": digits["train"], "val": digits["test"], "test": poison}  # av-digits test plays val here
    monkeypatch.setattr(paper_table, "fsdd_stores", lambda args, encoder: (stores, {"dataset": "stub"}))
    out = tmp_path / "select.json"
    argv = ["paper_table.py", "--quick", "--parts", "select", "--dpcs", "1", "--ablation-dpcs", "", "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    paper_table.main()
    select = json.loads(out.read_text())["encoders"]["random"]["select"]
    assert select["split"] == "val" and set(select["best"]["dm"]) == {"1"}
    with pytest.raises(AssertionError, match="read the test store"):  # and the guard does bite
        ibdc_cli.evaluation.open_store(poison)


@pytest.mark.slow
def test_condense_speed_quick_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "condense_speed.py"), "--quick", "--parts", "1,3", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)


def test_prototype_locations_scores_the_mean_and_kernel_modes(digits, tmp_path):
    """The DPC 1 analysis script: at a tiny sigma the kernel mode is the mean, so both score the same."""
    out = tmp_path / "locations.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "prototype_locations.py")]
    command += ["--train", str(digits["train"]), "--test", str(digits["test"]), "--space-maps", "whiten,none"]
    command += ["--sigmas", "0.01,2", "--seeds", "1", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["space_map"] for row in rows] == ["whiten", "none"]
    for row in rows:
        assert row["mode σ=0.01"] == pytest.approx(row["mean (dm)"], abs=1.0)
        assert all(0 <= row[k] <= 100 for k in ("mean (dm)", "mode σ=0.01", "mode σ=2"))
    assert "| whiten |" in result.stdout


@pytest.mark.slow
def test_bind_speed_quick_runs(tmp_path, fsdd_source):
    """The bind profile on a few fsdd-mnist rows: every setting timed, one clip cheaper per step in total work."""
    out = tmp_path / "bind_speed.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "bind_speed.py"), "--quick", "--source", str(fsdd_source)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*command, "--json", str(out)], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["clips_equal"] is True and report["steps_per_epoch"] == 3
    assert {"3 clips, 1 thread", "1 clip, 1 thread"} <= set(report["step"])
    assert all(entry["step_s"] > 0 for entry in report["step"].values())


def test_store_verify_measures_hash_and_read(tmp_path):
    out = tmp_path / "store_verify.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "store_verify.py"), "--rows", "3000", "--dim", "32"]
    args = ["--shard-rows", "1000", "--repeats", "1", "--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["shards"] == 3 and report["hash_s"] > 0 and report["read_s"] > 0
    assert report["load_s"] == pytest.approx(report["hash_s"] + report["read_s"], abs=2e-3)


def test_reports_of_one_part_run_for_two_method_sets_merge_row_by_row(monkeypatch):
    """paper_table's --render / --selection: the select part run as two processes (--methods a / --methods b)
    merges into one part holding both methods' rows and choices."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import paper_table

    def report(method, value):
        select = {
            "split": "val",
            "rows": {method: {"whiten": {"1": {"mean": value}}}},
            "best": {method: {"1": "whiten"}},
        }
        return {"command": f"run {method}", "minutes": 1.0, "seeds": 2, "encoders": {"bound": {"select": select}}}

    merged = paper_table.merge_reports([report("dm", 70.0), report("random", 40.0)])
    select = merged["encoders"]["bound"]["select"]
    assert set(select["rows"]) == set(select["best"]) == {"dm", "random"}
    assert select["rows"]["dm"]["whiten"]["1"]["mean"] == 70.0 and merged["minutes"] == 2.0
    assert merged["command"] == "run dm; run random"


def test_whole_by_modality_fuses_the_heads_it_scores_alone(digits, monkeypatch):
    """benchmarks/whole_by_modality.py: one modality's fused score is its own; two give a fused score too."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import whole_by_modality

    data, held, classes = whole_by_modality.load_pair(digits["train"], digits["test"], ["image", "audio"])
    alone = whole_by_modality.by_modality(data, held, classes, ["image"], "whiten")
    assert alone["fused"] == alone["image"] and 0 <= alone["image"] <= 100
    both = whole_by_modality.by_modality(data, held, classes, ["image", "audio"], "whiten")
    assert both["image"] == alone["image"] and set(both) == {"image", "audio", "fused"}


@pytest.mark.slow
def test_scale_quick_runs_and_compares_process_counts(tmp_path):
    out = tmp_path / "scale.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--quick", "--json", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = json.loads(out.read_text())
    assert (one["processes"], two["processes"]) == (1, 2) and two["identical_to_1_process"] is True
    assert len(one["peak_rss_gib"]) == 1 and len(two["peak_rss_gib"]) == 2
    assert len(two["peak_memory_mib_per_process"]) == 2 and set(one["seconds_per_class"]) == {"bank", "steps"}
    assert one["evaluate_train"]["wall_s"] > 0 and "| 4 | 160 | 2 |" in result.stdout
