"""report.html from a run folder: its structure, numbers, links and escaping, without a browser."""

import json
import logging
import math
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from anomalib_multiclass.evaluation.table import write_results
from anomalib_multiclass.report import (
    HEADER,
    ImageScore,
    build_report,
    read_per_image_scores,
    report_after_test,
    write_per_image_scores,
)
from anomalib_multiclass.report.run_info import record_run_info
from anomalib_multiclass.report.scores import auroc, average_precision, roc_pr
from anomalib_multiclass.utils.paths import category_picture_path

ODD = 'a&b <x>"'  # a category name that must be escaped everywhere
METRICS = ["image_AUROC", "image_AP"]


class Page(HTMLParser):
    """Start tags with their attributes and the id of the enclosing <section>, and the page's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict, str | None]] = []
        self.sections: list[str | None] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        self.tags.append((tag, attrs, self.sections[-1] if self.sections else None))

    def handle_endtag(self, tag):
        if tag == "section":
            self.sections.pop()

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag, section=...):
        return [a for t, a, s in self.tags if t == tag and (section is ... or s == section)]


def _image_path(category: str, kind: str, index: int) -> str:
    return f"/data/synthetic/{category}/test/{kind}/{index:03d}.png"


def _picture(run: Path, category: str, image_path: str) -> None:
    path = category_picture_path(image_path, category, run / "images")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 8), (200, 30, 30)).save(path)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A finished run (see :func:`make_run_folder`)."""
    return make_run_folder(tmp_path)


def make_run_folder(tmp_path: Path) -> Path:
    """A finished run: table, per-image scores, pictures (one missing), config and run info."""
    run = tmp_path / "results" / "OmniAD" / "MultiClassFolder" / "all" / "v0"
    results = {
        "brick": {"image_AUROC": 0.9, "image_AP": 0.95},
        ODD: {"image_AUROC": 0.5, "image_AP": 0.6},
        "grass": {"image_AUROC": math.nan, "image_AP": math.nan},
        "mean": {"image_AUROC": 0.7, "image_AP": 0.775},
        "pooled": {"image_AUROC": 0.66, "image_AP": 0.7},
    }
    write_results(run, results, METRICS, {"grass": "no defective test image"}, {"mean": {"image_AUROC": 2}})
    rows = []
    for category in ("brick", ODD, "grass"):
        for index, score in enumerate([0.1, 0.2, 0.3, 0.62]):  # normal: one false reject at threshold 0.6
            rows.append(ImageScore(category, _image_path(category, "good", index), 0, score, None, None, 0.6))
        if category != "grass":
            for index, score in enumerate([0.4, 0.55, 0.7, 0.8, 0.9]):  # defective: two misses
                rows.append(ImageScore(category, _image_path(category, "crack", index), 1, score, None, None, 0.6))
    write_per_image_scores(run / "per_image_scores.csv", rows)
    for row in rows:
        if not (row.category == "brick" and row.score == 0.4):  # the worst miss of brick has no picture
            _picture(run, row.category, row.image_path)
    (run / "config.yaml").write_text(
        "seed_everything: 7\ntrainer:\n  max_epochs: 30\nmodel:\n  class_path: anomalib_multiclass.models.OmniAD\n"
        "data:\n  class_path: anomalib_multiclass.data.MultiClassFolder\n  init_args:\n    root: ./datasets/synthetic\n"
    )
    record_run_info(run, command="anomalib train --config configs/quickstart_omni_ad.yaml")
    return run


def test_report_shows_table_plots_counts_pictures_and_run(run_dir):
    path = build_report(run_dir)
    assert path == run_dir / "report.html"
    text = path.read_text()
    page = Page(text)
    body = " ".join(" ".join(page.text).split())

    # the table: every metric, categories sortable, summary rows apart, n/a and the note
    assert [a.get("id") for a in page.find("table") if a.get("id")] == ["metrics"]
    assert "category image_AUROC image_AP" in body
    cells = [a.get("data-value") for a in page.find("td", "table")]
    assert cells[:3] == ["brick", "0.9", "0.95"]
    assert cells[6:9] == ["grass", "", ""]
    assert "grass : no defective test image" in body.replace("grass:", "grass :")
    assert body.count("n/a") >= 2

    # one section per category: histogram with the threshold, ROC and PR where defined, the counts
    sections = [a["id"] for a in page.find("section") if a.get("class") == "category"]
    assert sections == ["category-0", "category-1", "category-2"]
    assert len(page.find("svg", "category-0")) == 3
    assert len(page.find("svg", "category-2")) == 1
    assert len(page.find("line", "category-0")) >= 1
    assert 'class="threshold"' in text
    assert "False rejects (normal called anomalous): 1 of 4 (25.0 %)" in body
    assert "misses (defective called normal): 2 of 5 (40.0 %)" in body
    assert "ROC and precision-recall undefined: no defective test image" in body

    # the worst cases: the highest normal first, the lowest defective first; a missing picture is named
    images = page.find("img")
    assert len(images) == (4 + 4 - 1) + (4 + 4) + 4  # at most 4 per case: brick (one missing), ODD, grass (normal)
    for attributes in images:
        src = attributes["src"]
        assert not src.startswith(("/", "http", "file:")), src
        assert (run_dir / Path(*src.split("/"))).is_file() or (run_dir / _unquote(src)).is_file(), src
    assert "picture not found: images/brick/test/crack/000.png" in body

    # the run, escaping, and nothing fetched from anywhere
    for expected in ("OmniAD", "MultiClassFolder", "30", "7", "anomalib train --config configs/quickstart_omni_ad"):
        assert expected in body
    assert ODD not in text
    assert "a&amp;b &lt;x&gt;&quot;" in text
    for tag, attributes, _ in page.tags:
        for name in ("src", "href"):
            assert not str(attributes.get(name, "")).startswith(("http:", "https:", "//")), (tag, attributes)
    assert "<link" not in text
    assert "@import" not in text
    assert "url(" not in text


def _unquote(src: str) -> str:
    from urllib.parse import unquote

    return unquote(src)


def test_odd_names_are_linked_url_quoted(run_dir):
    page = Page(build_report(run_dir).read_text())
    odd = [a["src"] for a in page.find("img", "category-1")]
    assert odd
    assert all("%3C" in s and " " not in s for s in odd)
    assert all((run_dir / _unquote(s)).is_file() for s in odd)


def test_per_image_scores_round_trip(tmp_path):
    rows = [
        ImageScore("a", "/x/a/test/good/0.png", 0, 0.25, 0.1, 0, 0.5),
        {"category": "b", "image_path": "b/1.png", "label": None, "score": 1.5},
        ("c", "c/2.png", 1, 2.0, "", 1, None),
    ]
    path = write_per_image_scores(tmp_path / "per_image_scores.csv", rows)
    assert path.read_text().splitlines()[0] == ",".join(HEADER)
    assert HEADER == ("category", "image_path", "label", "score", "normalized_score", "pred_label", "threshold")
    back = read_per_image_scores(path)
    assert back[0] == rows[0]
    assert back[1] == ImageScore("b", "b/1.png", None, 1.5)
    assert back[2] == ImageScore("c", "c/2.png", 1, 2.0, None, 1, None)


def test_curves_match_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.4 * labels, 1)  # many ties
    roc, pr = roc_pr(scores[labels == 0].tolist(), scores[labels == 1].tolist())
    assert auroc(roc) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert average_precision(pr) == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert roc_pr([0.1], []) == ([], [])


def test_a_large_test_set_gives_a_fixed_number_of_pictures_and_small_plots(tmp_path):
    rng = np.random.default_rng(1)
    rows = [
        ImageScore(
            "big", f"/d/big/test/{'good' if i % 2 else 'crack'}/{i:05d}.png", i % 2 ^ 1, float(s), None, None, 0.5
        )
        for i, s in enumerate(rng.random(20000))
    ]
    write_per_image_scores(tmp_path / "per_image_scores.csv", rows)
    write_results(tmp_path, {"big": {"image_AUROC": 0.5}}, ["image_AUROC"])
    text = build_report(tmp_path, pictures_per_case=3).read_text()
    page = Page(text)
    assert len(page.find("figure")) == 6
    assert all(len(a["points"].split()) <= 256 for a in page.find("polyline"))
    assert len(text) < 150_000


def test_a_run_folder_without_scores_still_gets_its_table(tmp_path):
    write_results(tmp_path, {"a": {"image_AUROC": 1.0}, "mean": {"image_AUROC": 1.0}}, ["image_AUROC"])
    body = " ".join(Page(build_report(tmp_path).read_text()).text)
    assert "No per_image_scores.csv in the run folder" in body
    assert "no config.yaml in the run folder" in body


def test_command_rebuilds_reports_and_separate_keeps_its_arguments(run_dir, tmp_path, capsys):
    from anomalib_multiclass.separate import main

    assert main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report.html")
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert main(["report"]) == 2
    assert main(["separate", "--help"]) == 0
    assert "anomalib-multiclass report <run_dir>" in capsys.readouterr().out


def test_a_failing_report_only_warns(tmp_path, caplog):
    target = tmp_path / "a_file"
    target.write_text("")
    with caplog.at_level(logging.WARNING):
        assert report_after_test(target) is None
    assert "Could not write the HTML report" in caplog.text


def test_the_evaluator_writes_the_report_after_its_table(tmp_path):
    import torch

    from anomalib_multiclass.evaluation import PerCategoryEvaluator

    evaluator = PerCategoryEvaluator(metrics=["image_AUROC"])
    evaluator.reset()
    batch = SimpleNamespace(
        pred_score=torch.tensor([0.1, 0.9, 0.2, 0.8]), gt_label=torch.tensor([0, 1, 0, 1]), category=["x"] * 4
    )
    evaluator.update(batch)
    evaluator.compute()
    evaluator._report(tmp_path, ["image_AUROC"])
    assert (tmp_path / "report.html").is_file()
    assert json.loads((tmp_path / "run_info.json").read_text())["command"]


def test_the_separate_report_links_each_category_s_own_run(tmp_path):
    from anomalib_multiclass.separate import _separate_report

    root = tmp_path / "Padim" / "MultiClassFolder"
    run_dirs = {}
    for category in ("brick", "grass"):
        run = root / category / "v0"
        rows = [ImageScore(category, _image_path(category, k, i), int(k == "crack"), 0.1 + i + 5 * (k == "crack"))
                for k in ("good", "crack") for i in range(2)]  # fmt: skip
        write_per_image_scores(run / "per_image_scores.csv", rows)
        for row in rows:
            _picture(run, category, row.image_path)
        (run / "config.yaml").write_text("model:\n  class_path: anomalib.models.Padim\n")
        run_dirs[category] = run
    separate = root / "separate"
    write_results(separate, {"brick": {"image_AUROC": 1.0}, "grass": {"image_AUROC": 1.0}}, ["image_AUROC"])
    path = _separate_report(separate, run_dirs)
    page = Page(path.read_text())
    sources = [a["src"] for a in page.find("img")]
    assert len(sources) == 8
    assert all(s.startswith("../") for s in sources)
    assert all((separate / s).resolve().is_file() for s in sources)
    assert "anomalib.models.Padim" in " ".join(page.text)
    assert "one model per category: brick, grass" in " ".join(page.text)
    assert len(read_per_image_scores(separate / "per_image_scores.csv")) == 8


def test_anomalib_s_visualizer_saves_one_folder_per_category_on_our_data(tmp_path):
    from anomalib.visualization import ImageVisualizer

    from anomalib_multiclass.visualization import MultiClassImageVisualizer, category_output_path, use_category_folders

    def model(visualizer, names=("a", "b")):
        return SimpleNamespace(
            _trainer=SimpleNamespace(datamodule=SimpleNamespace(category_names=names)), visualizer=visualizer
        )

    plain = ImageVisualizer(field_size=(64, 64))
    assert use_category_folders(model(plain))
    assert type(plain) is MultiClassImageVisualizer
    assert plain.field_size == (64, 64)
    assert not use_category_folders(model(ImageVisualizer(), names=None))
    custom = type("Custom", (ImageVisualizer,), {})()
    assert not use_category_folders(model(custom))
    assert type(custom).__name__ == "Custom"
    image = "/d/brick/test/good/000.png"
    assert category_output_path(image, "brick", tmp_path) == category_picture_path(image, "brick", tmp_path)
    assert (tmp_path / "brick" / "test" / "good").is_dir()
