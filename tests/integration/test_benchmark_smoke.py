"""The benchmark script runs end to end at its smoke size and measures every cell of every section of the report."""

import json
import os
import subprocess
import sys

import pytest

# Rows that measure nothing by design, and why; any other row with an empty cell, or a note that says it failed or
# was left out, fails the test.
NOT_MEASURED = {
    ("Dinomaly (anomalib)", "unified"): "its DINOv2 weights come from the hub, out of reach offline",
    ("LGC", "cache on"): "LGC has no frozen-feature cache (every step augments)",
}
LEFT_OUT = ("fail", "skip", "not run", "not timed", "not measured", "not built", "error", "out of memory")


def table_rows(report: str) -> list[tuple[str, dict[str, str]]]:
    """Every row of every markdown table: (the section it is in, {column: cell})."""
    rows, section, header = [], "", None
    for line in report.splitlines():
        if line.startswith("#"):
            section = line.lstrip("# ")
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif set(line) <= set("|-"):
            continue
        else:
            rows.append((section, dict(zip(header, cells, strict=True))))
    return rows


def test_table_rows_sees_empty_cells_and_notes():
    report = "## Speed\n| model | setting | b1 ms | note |\n|---|---|---|---|\n| A | 64 px | 1.0 |  |\n"
    report += "| B | 64 px |  | x |\n\ntext\n"
    assert table_rows(report) == [
        ("Speed", {"model": "A", "setting": "64 px", "b1 ms": "1.0", "note": ""}),
        ("Speed", {"model": "B", "setting": "64 px", "b1 ms": "", "note": "x"}),
    ]


@pytest.mark.slow  # every section at its smoke size: 18 minutes on 2 quiet cores (7d6d3a9); .ci/run runs it
def test_benchmark_smoke(tmp_path):
    output = tmp_path / "BENCHMARKS.md"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--size", "smoke", "--output", str(output)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    check_report(output)


# Columns that are empty by design in some rows: an edge row's ratios to fp32 in the fp32 row itself, the float
# share of a graph that has no INT8 layers.
RELATIVE_COLUMNS = ("× fp32", "Δ", "float / all")


def check_report(output):
    """Every section, every model, every cell measured, the JSON beside every fragment."""
    report = output.read_text()
    results = output.parent / "benchmarks" / "results"
    for section in (
        "## Proxy quality",
        "### Choices, made on the validation proxy only",
        "### Test proxy",
        "### Second test proxy",
        "## All-in-all",
        "## Inference speed",
        "## Training speed",
        "## RLR attention",
        "## Memory and disk",
        "## bf16-mixed training",
        "## Edge",
        "## LGC's claim",
        "## Evaluation at scale",
    ):
        assert section in report, section
    assert "failed" not in report.lower(), report[report.lower().index("failed") - 500 :][:1000]
    assert "not generated yet" not in report
    models = ("UniAD", "MintAD", "RLR", "OmniAD", "LGC", "RLR level 1", "Padim (anomalib)", "PatchCore (anomalib)")
    for model in (*models, "ReverseDistillation (anomalib)"):
        assert f"| {model} |" in report
    assert "| LGC (contrastive off = RD joint) | unified" in report
    assert "| LGC (contrastive off = RD joint) | all-in-all" in report

    # every row of every table measured: no empty cell, no note saying a measurement failed or was left out
    rows = table_rows(report)
    assert len(rows) > 60, report
    # provenance: every section names its commit; run from a clean checkout, every one stands for this commit
    provenance = [list(row.values()) for _, row in rows if "numbers from commit" in row]
    assert [row[0] for row in provenance] == ["quality", "core", "bf16", "edge", "lgc_claim", "scale"], provenance
    tracked_changes = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                     text=True, check=True).stdout.strip()  # fmt: skip
    if not tracked_changes:
        assert all(row[2] == "yes" for row in provenance), provenance
    for section, row in rows:
        if "model" not in row:
            continue
        allowed = next((why for (name, setting), why in NOT_MEASURED.items() if row["model"] == name and setting in
                        row.get("setting", "")), None)  # fmt: skip
        if allowed:
            continue
        empty = [column for column, cell in row.items() if not cell and column != "note"]
        empty = [c for c in empty if not (section.startswith("Edge") and any(r in c for r in RELATIVE_COLUMNS))]
        if section.startswith("LGC's claim"):  # one per-category table: each setting has its own categories
            other = "/" if row.get("setting", "").startswith("unified") else ""
            empty = [c for c in empty if ("/" in c) != bool(other)]
        assert not empty, f"{section}: nothing measured in {empty}: {row}"
        assert not any(word in row.get("note", "").lower() for word in LEFT_OUT), f"{section}: {row}"
    # the export rows, PatchCore's included (its static batch is worked around, and said)
    speed = {row["model"]: row for section, row in rows if section.startswith("Inference speed")}
    for model in ("UniAD", "MintAD", "RLR", "OmniAD", "LGC", "ReverseDistillation (anomalib)", "PatchCore (anomalib)"):
        assert speed[model]["ORT b1 ms"], speed[model]
        assert speed[model]["OpenVINO bN img/s"], speed[model]
    assert "patchcore_static_batch.py" in speed["PatchCore (anomalib)"]["note"]

    # quality: the choices on the validation proxy, every row over the seeds on both test proxies, a verdict each
    quality = json.loads((results / "quality.json").read_text())
    assert set(quality["tuning"]["schedule"]) == {"UniAD", "MintAD", "RLR", "OmniAD", "LGC"}
    for proxy in ("test", "heldout"):
        names = [row["name"] for row in quality["proxies"][proxy]]
        assert len(names) == 10, names
        for row in quality["proxies"][proxy]:
            assert len(row["per_seed"]["mean I-AUROC"]) == len(quality["seeds"]) >= 2, row
            assert row["against_reference"], row
    assert "No previous run's JSON" in report  # nothing to compare with in a fresh folder
    # the edge section: every model's INT8 export, its counters and its why line
    edge = json.loads((results / "edge.json").read_text())["results"]
    for model in ("UniAD", "MintAD", "RLR", "OmniAD", "LGC"):
        variants = edge[model]["variants"]
        assert variants["INT8, encoder float"]["INT8 quantizers"] > 0, model
        assert len({len(v["bN s"]) for v in variants.values()}) == 1  # interleaved: as many rounds each
        assert variants["fp32"]["counters"]["top_nodes"][0]["name"]
        assert f"- **{model}**: default INT8" in report
    # the core section's JSON holds the same tables
    core = json.loads((results / "core.json").read_text())
    assert {row["name"] for row in core["tables"]["inference"]} == set(speed)
    for fragment in ("quality.md", "core.md", "edge.md", "lgc_claim.md", "bf16_training.md"):
        assert f"commit {core['commit']}" in (results / fragment).read_text(), fragment  # one commit, every section
