"""benchmarks.run's report helpers: the JSON record of a run and the "what changed" comparison computed from it."""

import json

from benchmarks.run import Row, changes, run_record


def _record(commit_rows, commands, size="smoke"):
    record = run_record("python -m benchmarks.run", size, 1.0, {"quality": commit_rows}, quality_commands=commands)
    return json.loads(json.dumps(record))  # as read back from the file


def test_the_record_holds_every_table_and_round_trips_through_json():
    rows = [Row("UniAD", "unified, 2 epochs", {"mean I-AUROC": 0.75, "mean P-AUROC": 0.9}, "")]
    record = _record(rows, [("UniAD", "anomalib train --model UniAD")])
    assert record["tables"]["quality"] == [
        {
            "name": "UniAD",
            "setting": "unified, 2 epochs",
            "values": {"mean I-AUROC": 0.75, "mean P-AUROC": 0.9},
            "note": "",
        }
    ]
    assert record["size"] == "smoke"
    assert record["commit"]
    assert record["quality_commands"] == [["UniAD", "anomalib train --model UniAD"]]


def test_changes_are_computed_from_the_previous_record():
    assert changes(None, _record([], [])).startswith("No previous run's JSON")
    before = _record(
        [
            Row("UniAD", "unified, 2 epochs", {"mean I-AUROC": 0.70, "mean P-AUROC": 0.90}),
            Row("PatchCore (anomalib)", "separate (3 models)", {"mean I-AUROC": 0.90, "mean P-AUROC": 0.95}),
            Row("Gone", "unified", {"mean I-AUROC": 0.5}),
        ],
        [
            ("UniAD", "anomalib train --model UniAD --model.lr 0.001 --trainer.max_epochs 2"),
            ("PatchCore (anomalib), separate (3 models)", "anomalib-multiclass separate --model Patchcore"),
        ],
    )
    now = _record(
        [
            Row("UniAD", "unified, 4 epochs", {"mean I-AUROC": 0.75, "mean P-AUROC": 0.91}),
            Row("PatchCore (anomalib)", "separate (3 models)", {"mean I-AUROC": 0.90, "mean P-AUROC": 0.95}),
            Row("LGC", "unified", {"mean I-AUROC": 0.8, "mean P-AUROC": 0.9}),
        ],
        [
            ("UniAD", "anomalib train --model UniAD --model.lr 0.001 --trainer.max_epochs 4"),
            ("PatchCore (anomalib), separate (3 models)", "anomalib-multiclass separate --model Patchcore"),
        ],
    )
    text = changes(before, now)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert (
        "| unified, 2 epochs | 0.700 / 0.900 | unified, 4 epochs | 0.750 / 0.910 | +0.050 | +0.010 | -2 +4 |"
        in (lines["UniAD"])
    )
    assert lines["PatchCore (anomalib)"].endswith("| +0.000 | +0.000 | none |")
    assert "(new row)" in lines["LGC"]
    assert "(row gone)" in lines["Gone"]
    assert "at commit" in text


def test_the_curves_text_says_which_curve_still_rises():
    from benchmarks.run import _still_rising

    flat = [{"epoch": 1, "image_AUROC": 0.90}, {"epoch": 2, "image_AUROC": 0.902}]
    rising = [{"epoch": e, "image_AUROC": a} for e, a in ((10, 0.89), (50, 0.91), (60, 0.92))]
    assert _still_rising({"UniAD": flat}).startswith("No curve's image AUROC rises")
    assert _still_rising({"UniAD": flat, "MintAD": rising}).endswith(": MintAD (0.910 → 0.920).")


def test_provenance_marks_sections_from_other_code_stale(tmp_path):
    from benchmarks.cells import code_commit
    from benchmarks.run import SECTIONS, changed_since, provenance, section_pathspec, stale_sections

    head = code_commit().removesuffix("+dirty")
    # each section's JSON names its commit in its own place
    records = {"quality.json": {"code": head}, "core.json": {"commit": head},
               "edge.json": {"machine": {"commit": head}}, "bf16_training.json": {"machine": {"commit": "0000000"}},
               "scale.json": {"commit": head}}  # fmt: skip
    for name, record in records.items():
        (tmp_path / name).write_text(json.dumps(record))
    table = {line.split(" | ")[0].strip("| "): line for line in provenance(tmp_path).splitlines()[2:]}
    assert "unknown" in table["bf16"]  # a commit this clone does not know
    assert "stale" in table["bf16"]
    assert "unknown" in table["lgc_claim"]  # no JSON at all
    for section in ("quality", "core", "edge", "scale"):
        assert f"| {head} |" in table[section]
        # at HEAD a section is fresh unless its code has uncommitted changes (then it is stale, and says so)
        fresh = changed_since(head, section_pathspec(section)) == []
        assert table[section].endswith("| yes |") if fresh else "**stale**" in table[section], table[section]
        assert (section in stale_sections(tmp_path, list(SECTIONS))) is not fresh  # what `--stale` reruns
    assert {"bf16", "lgc_claim"} <= set(stale_sections(tmp_path, list(SECTIONS)))
    assert changed_since(f"{head}+dirty", ("anomalib_multiclass",)) is None
    # documentation never changes a number: a model's README.md stales no section
    for section in SECTIONS:
        assert ":(exclude,glob)anomalib_multiclass/**/*.md" in section_pathspec(section), section


def test_the_kept_work_folder_reaches_the_quality_runs(tmp_path):
    """A saved quality run is reused only for the same command, and the command names the proxy folders: without
    the kept folder, ``run.py --stale --work DIR`` would redo every saved run in a fresh temporary folder."""
    from benchmarks.common import SIZES
    from benchmarks.run import section_arguments

    arguments = section_arguments("quality", "smoke", SIZES["smoke"], tmp_path / "results", 2, tmp_path / "kept")
    assert arguments[arguments.index("--work") + 1] == str(tmp_path / "kept")
    assert "--work" not in section_arguments("quality", "smoke", SIZES["smoke"], tmp_path / "results", 2)


def test_a_section_run_from_uncommitted_code_records_a_dirty_commit(tmp_path):
    import subprocess

    from benchmarks.cells import code_commit

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    for path in ("anomalib_multiclass/model.py", "benchmarks/edge.py", "benchmarks/results/edge.json"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("0\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    head = git("rev-parse", "--short", "HEAD").strip()
    assert code_commit(tmp_path) == head
    (tmp_path / "benchmarks/results/edge.json").write_text("1\n")  # what a run writes: still the commit
    assert code_commit(tmp_path) == head
    (tmp_path / "anomalib_multiclass/model.py").write_text("1\n")  # the code the numbers come from
    assert code_commit(tmp_path) == f"{head}+dirty"
    git("checkout", "--", "anomalib_multiclass")
    (tmp_path / "benchmarks/edge.py").write_text("1\n")
    assert code_commit(tmp_path) == f"{head}+dirty"
    assert code_commit(tmp_path / "nowhere") == "unknown"
