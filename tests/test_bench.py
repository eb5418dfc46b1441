"""The benchmark runs end to end on a tiny setting and writes every figure the README quotes (it times nothing for
the tests: the figures themselves are not asserted beyond being measurements)."""

import json

from conftest import cli_env, run_cli


def test_tiny_benchmark_writes_every_field(tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("bench", "--tiny", "--json", str(out), env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["flops_per_sample"] == {"forward": 804_864, "backward": 1_208_320, "total": 2_013_184}
    assert report["matmul_ceiling_flops"] > 1e8
    assert report["peak_memory_bytes"] > 100 * 2**20
    assert set(report["machine"]) >= {"cpu", "cores", "tensorflow", "keras"}
    for name in ("sample", "synthetic"):
        rows = report["datasets"][name]
        assert set(rows) >= {"baseline_keras_fit_b100", "default_b100", "default_b1024", "mirrored1_b100"}
        for row in rows.values():
            assert row["samples_per_sec"] > 0 and 0 < row["mfu"]
            assert set(row) == {"samples_per_sec", "vs_baseline", "vs_default_b100", "model_flops_per_sec", "mfu"}
        assert rows["baseline_keras_fit_b100"]["vs_baseline"] == 1.0
        summary = report["summary"][name]
        assert set(summary["met"]) == {"batch100_vs_baseline", "batch1024_mfu", "overhead"}
        assert summary["batch1024_mfu"] == rows["default_b1024"]["mfu"]
    assert "batch 1024 MFU" in result.stdout and "x baseline" in result.stdout
