"""benchmarks.quality: choices made on the validation proxy only, rows over seeds, the verdict against PatchCore."""

import copy
import json
import subprocess
from pathlib import Path

import pytest

from benchmarks import quality
from benchmarks.cells import PROXIES, Cell, make_proxy, run_cells
from benchmarks.common import SIZES
from benchmarks.quality import Tuning, best_point, choose, collect, table

TINY = copy.deepcopy(SIZES["smoke"]) | {
    "categories": ["brick", "coffee"], "heldout_categories": ["tissue", "coins"], "n_train": 2, "n_test_good": 1,
    "n_test_defect": 2, "image_size": 32, "seeds": [0, 1, 2],
}  # fmt: skip


def _results(image: float, categories: list[str]) -> dict:
    table = {c: {"image_AUROC": image, "pixel_AUROC": 0.9, "AUPRO": 0.8} for c in categories}
    return table | {"mean": {"image_AUROC": image, "pixel_AUROC": 0.9, "AUPRO": 0.8}}


def test_best_point_takes_the_highest_and_the_earliest_among_equals():
    points = [
        {"epoch": 10, "image_AUROC": 0.90}, {"epoch": 20, "image_AUROC": 0.95}, {"epoch": 30, "image_AUROC": 0.9501}
    ]  # fmt: skip
    assert best_point(points)["epoch"] == 20
    with pytest.raises(ValueError, match="nothing to choose"):
        best_point([{"epoch": 5}])


def test_choose_reads_only_the_validation_outcomes(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["tuning"]["ours"] = {"UniAD": {"lr": [1e-3, 3e-3], "max_epochs": 4, "val_every": 2}}
    cells = quality.tuning_cells(cfg, tmp_path)
    assert {cell.proxy for cell in cells} == {"validation"}
    assert all(str(tmp_path / "proxy_validation") in " ".join(cell.args) for cell in cells)
    outcomes = {}
    for cell in cells:
        if cell.label == "UniAD lr 0.001":
            outcome = {"results": _results(0.80, []), "curve": [{"epoch": 2, "image_AUROC": 0.85}]}
        elif cell.label == "UniAD lr 0.003":  # better at epoch 2 than anything of lr 0.001
            outcome = {"results": _results(0.70, []), "curve": [{"epoch": 2, "image_AUROC": 0.91}]}
        elif cell.label.endswith("option 1"):
            outcome = {"error": "RuntimeError('no')"}
        else:
            outcome = {"results": _results(0.75, [])}
        outcomes[cell] = outcome
    tuning = choose(cfg, outcomes)
    assert tuning.schedule == {"UniAD": {"lr": 3e-3, "epochs": 2}}
    assert tuning.baselines["Padim"] == cfg["tuning"]["baselines"]["Padim"][0]  # option 1 failed
    assert any(c.get("error") for c in tuning.candidates)
    assert "| yes |" in quality.tuning_table(tuning)


def test_rows_are_mean_and_std_over_seeds_and_judged_against_patchcore(tmp_path):
    cfg = copy.deepcopy(TINY)
    tuning = Tuning(
        schedule={"UniAD": {"lr": 1e-3, "epochs": 3}},
        baselines={"Patchcore": ["--model.layers", "[blocks.2,blocks.4]"]},
    )
    cells = quality.test_cells(cfg, "heldout", tuning, ["UniAD"], tmp_path)
    assert len(cells) == 3 * 3  # (PatchCore unified, separate, UniAD) x 3 seeds
    assert {cell.seed for cell in cells} == {0, 1, 2}
    scores = {"UniAD": [0.70, 0.72, 0.71], "PatchCore (anomalib)": [0.95, 0.96, 0.94]}
    outcomes = {}
    for cell in cells:
        name = cell.label.split(",")[0]
        if cell.seed == 2 and "separate" in cell.label:
            outcomes[cell] = {"error": "MemoryError()"}
            continue
        outcomes[cell] = {"results": _results(scores[name][cell.seed], ["tissue", "coins"]), "seconds": 1.0}
    rows = {row.name + row.setting.split(",")[0]: row for row in collect(cfg, "heldout", tuning, outcomes, tmp_path)}
    uniad = rows["UniADunified"]
    assert uniad.values["mean I-AUROC"] == pytest.approx([0.70, 0.72, 0.71])
    assert uniad.against_reference.startswith("PatchCore ahead beyond noise")
    assert "Welch t(" in uniad.against_reference
    assert "--seed_everything <seed>" in uniad.command
    assert "_seed<seed>" in uniad.command
    separate = rows["PatchCore (anomalib)separate (2 models)"]
    assert separate.failures == ["seed 2: MemoryError()"]
    text = table(list(rows.values()), ["tissue", "coins"])
    assert "0.710 ± 0.010" in text
    assert "failed: seed 2: MemoryError()" in text


def test_saved_cells_are_reused_only_while_the_result_code_is_unchanged(tmp_path, monkeypatch):
    from benchmarks import cells

    head = cells.code_commit().removesuffix("+dirty")
    cell = Cell("test", "UniAD", 0, "anomalib train", ("--model", "UniAD"))
    saved = tmp_path / "store" / cell.key
    saved.parent.mkdir(parents=True)
    record = {"code": head, "args": list(cell.args), "versions": cells.library_versions(), "results": {}, "seconds": 1}
    saved.write_text(json.dumps(record))
    monkeypatch.setattr(cells, "_run_cell", lambda *_: {"error": "ran"})
    reused = cells.result_code_unchanged_since(head)  # False only while the package has uncommitted changes
    outcome = run_cells([cell], tmp_path, 1, print, tmp_path / "store")[cell]
    assert outcome.get("seconds") == 1 if reused else outcome["error"] == "ran"
    for changed in ({"code": head + "+dirty"}, {"versions": {"torch": "0"}}, {"args": ["--model", "RLR"]}):
        saved.write_text(json.dumps(record | changed))
        assert run_cells([cell], tmp_path, 1, print, tmp_path / "store")[cell]["error"] == "ran", changed


def test_a_saved_cell_is_reused_from_another_work_folder(tmp_path, monkeypatch):
    from benchmarks import cells

    head = cells.code_commit().removesuffix("+dirty")
    monkeypatch.setattr(cells, "result_code_unchanged_since", lambda *_: True)  # the code check has its own tests
    cell = Cell("test", "UniAD", 0, "anomalib train", ("--data.root", f"{tmp_path}/proxy_test"), model="UniAD")
    record = {"code": head, "args": ["--data.root", "/elsewhere/proxy_test"], "work": "/elsewhere",
              "versions": cells.library_versions(), "results": {}, "seconds": 1}  # fmt: skip
    saved = tmp_path / "store" / cell.key
    saved.parent.mkdir(parents=True)
    saved.write_text(json.dumps(record))
    monkeypatch.setattr(cells, "_run_cell", lambda *_: {"error": "ran"})
    assert run_cells([cell], tmp_path, 1, print, tmp_path / "store")[cell].get("seconds") == 1
    saved.write_text(json.dumps(record | {"args": ["--data.root", "/elsewhere/proxy_validation"]}))
    outcome = run_cells([cell], tmp_path, 1, print, tmp_path / "store")[cell]
    assert outcome["error"] == "ran"
    assert json.loads(saved.read_text())["work"] == str(tmp_path)  # what the next reuse compares against


def test_the_result_code_check_sees_edits_new_files_and_unknown_commits(tmp_path, monkeypatch):
    from benchmarks import cells

    def git(*args: str) -> str:
        command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "model.py").write_text("WIDTH = 1\n")
    (tmp_path / "report.py").write_text("TITLE = 'a'\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    commit = git("rev-parse", "--short", "HEAD")
    monkeypatch.setattr(cells, "REPOSITORY", tmp_path)
    monkeypatch.setattr(cells, "CELL_PATHSPEC", ("pkg", ":(exclude,glob)pkg/deploy", ":(exclude,glob)pkg/**/*.md"))

    def unchanged() -> bool:
        cells.result_code_unchanged_since.cache_clear()
        return cells.result_code_unchanged_since(commit)

    assert unchanged()
    (tmp_path / "report.py").write_text("TITLE = 'b'\n")  # not result code: the cells stand
    (tmp_path / "pkg" / "deploy").mkdir()
    (tmp_path / "pkg" / "deploy" / "quantize.py").write_text("BITS = 8\n")  # code no cell runs
    (tmp_path / "pkg" / "README.md").write_text("docs\n")
    assert unchanged()
    (tmp_path / "pkg" / "layer.py").write_text("DEPTH = 2\n")  # a new, uncommitted module
    assert not unchanged()
    (tmp_path / "pkg" / "layer.py").unlink()
    (tmp_path / "pkg" / "model.py").write_text("WIDTH = 2\n")
    assert not unchanged()
    assert not cells.result_code_unchanged_since("0000000")  # a commit this clone does not know
    cells.result_code_unchanged_since.cache_clear()


def test_a_cell_depends_on_its_own_models_code_and_the_shared_code_only(tmp_path, monkeypatch):
    from benchmarks import cells
    from benchmarks.common import OUR_MODELS

    models = Path(cells.REPOSITORY) / "anomalib_multiclass" / "models"
    folders = {path.name for path in models.iterdir() if path.is_dir() and not path.name.startswith("_")}
    assert set(cells.MODEL_FOLDERS.values()) == folders - {"components"}
    assert set(cells.MODEL_FOLDERS) == set(OUR_MODELS)
    with pytest.raises(ValueError, match="Unknown model 'PaDiM'"):
        cells.cell_pathspec("PaDiM")

    def git(*args: str) -> str:
        command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    files = {
        "rlr": "anomalib_multiclass/models/rlr/torch_model.py",
        "rlr config": "configs/rlr_visa.yaml",
        "lgc": "anomalib_multiclass/models/lgc/loss.py",
        "shared": "anomalib_multiclass/models/components/attention.py",
    }
    for path in files.values():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("0\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    commit = git("rev-parse", "--short", "HEAD")
    monkeypatch.setattr(cells, "REPOSITORY", tmp_path)

    def standing() -> set[str | None]:
        cells.result_code_unchanged_since.cache_clear()
        return {
            model
            for model in ("RLR", "LGC", None)
            if cells.result_code_unchanged_since(commit, cells.cell_pathspec(model))
        }

    assert standing() == {"RLR", "LGC", None}
    for changed, still in (
        ("rlr", {"LGC", None}),
        ("rlr config", {"LGC", None}),
        ("lgc", {"RLR", None}),
        ("shared", set()),
    ):
        (tmp_path / files[changed]).write_text("1\n")
        assert standing() == still, changed
        git("checkout", "--", ".")
    cells.result_code_unchanged_since.cache_clear()


def test_the_three_proxies_are_distinct_and_the_test_proxy_is_the_old_one(tmp_path):
    from anomalib_multiclass.data.synthetic import make_synthetic_dataset

    roots = {proxy: make_proxy(proxy, TINY, tmp_path) for proxy in PROXIES}
    sizes = {"n_train": 2, "n_test_good": 1, "n_test_defect": 2, "image_size": 32}
    old = make_synthetic_dataset(tmp_path / "old", categories=TINY["categories"], seed=0, **sizes)
    image = "brick/train/good/000.png"
    assert (roots["test"] / image).read_bytes() == (old / image).read_bytes()
    assert (roots["validation"] / image).read_bytes() != (old / image).read_bytes()
    assert sorted(p.name for p in roots["heldout"].iterdir() if p.is_dir()) == ["coins", "tissue"]
    assert list((roots["heldout"] / "tissue" / "test").rglob("*.png"))


def test_what_changed_is_computed_from_the_previous_quality_record():
    from benchmarks.quality import SeededRow, as_run_record, rows_record
    from benchmarks.run import changes

    def record(score: float, epochs: int, commit: str) -> dict:
        row = SeededRow("UniAD", f"unified, {epochs} epochs", values={"mean I-AUROC": [score, score + 0.02]})
        row.command = f"anomalib train --model UniAD --trainer.max_epochs {epochs} --seed_everything <seed>"
        return {"command": "python -m benchmarks.quality", "code": commit, "size": "default",
                "proxies": {"test": rows_record([row])}}  # fmt: skip

    text = changes(as_run_record(record(0.80, 40, "aaa1111")), as_run_record(record(0.90, 60, "bbb2222")))
    assert "aaa1111" in text
    assert "bbb2222" in text
    line = next(line for line in text.splitlines() if line.startswith("| UniAD"))
    assert "+0.100" in line
    assert "-40 +60" in line


def test_the_first_run_is_compared_with_the_fragment_tuned_on_the_test_split(tmp_path):
    from benchmarks.common import RESULTS
    from benchmarks.quality import SeededRow, as_run_record, previous_record, rows_record
    from benchmarks.run import changes

    assert previous_record(tmp_path) is None  # nothing to compare with in an empty folder
    history = RESULTS / "quality_history" / "quality_1f7edd8.json"
    (tmp_path / "quality_history").mkdir()
    (tmp_path / "quality_history" / history.name).write_text(history.read_text())
    before = previous_record(tmp_path)  # no quality.json yet: the newest history record
    assert before["commit"] == "1f7edd8"
    rows = {row["name"] + row["setting"][:8]: row for row in before["tables"]["quality"]}
    assert rows["UniADunified,"]["values"]["mean I-AUROC"] == 0.923  # the table of commit 1f7edd8, read back
    assert rows["PatchCore (anomalib)separate"]["values"]["gravel I-AUROC"] == 0.783
    row = SeededRow("UniAD", "unified, 60 epochs", values={"mean I-AUROC": [0.88, 0.90, 0.92]})
    row.command = "anomalib train --model UniAD --trainer.max_epochs 60 --seed_everything <seed>"
    now = {"command": "python -m benchmarks.quality", "code": "bbb2222", "size": "default",
           "proxies": {"test": rows_record([row])}}  # fmt: skip
    line = next(line for line in changes(before, as_run_record(now)).splitlines() if line.startswith("| UniAD"))
    assert "0.923" in line
    assert "-0.023" in line
    (tmp_path / "quality.json").write_text(json.dumps(now | {"command": "python -m benchmarks.quality"}))
    assert previous_record(tmp_path)["commit"] == "bbb2222"  # once a run has its JSON, the next compares with it


def test_progress_reads_the_store_without_running_anything(tmp_path):
    from benchmarks.quality import progress

    for row, values in {"UniAD": [0.80, 0.82, 0.81], "PatchCore_anomalib_unified": [0.93, 0.94, 0.935]}.items():
        for seed, value in enumerate(values):
            saved = tmp_path / "test" / row / f"seed{seed}.json"
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps({"results": {"mean": {"image_AUROC": value}}, "seconds": 1}))
    (tmp_path / "test" / "RLR").mkdir()
    (tmp_path / "test" / "RLR" / "seed0.json").write_text(json.dumps({"error": "MemoryError()"}))
    text = progress(tmp_path)
    line = next(line for line in text.splitlines() if line.startswith("| UniAD"))
    assert "| 0,1,2 | 0.810 ± 0.010 |" in line
    assert "beyond noise" in line  # 0.81 against 0.935, three seeds each
    assert "| RLR" not in text  # a failed run is not a value
    assert "no runs yet" in text  # the heldout proxy
