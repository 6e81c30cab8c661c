"""``report.html``: one self-contained page per run that an inspection engineer can set thresholds from.

It opens from disk with no server and no network: CSS, the sort script and the plots (SVG) are inline, and the
heat-map pictures are the visualizer's own files, linked relatively. Its cost does not grow with the maps: the
plots come from ``per_image_scores.csv`` (one row per image) and each category shows a fixed number of pictures.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from urllib.parse import quote

from anomalib_multiclass.report.run_info import describe_run
from anomalib_multiclass.report.scores import (
    PER_IMAGE_SCORES,
    CategoryScores,
    ImageScore,
    auroc,
    average_precision,
    by_category,
    read_per_image_scores,
    roc_pr,
    thin,
)
from anomalib_multiclass.report.svg import curve_svg, histogram_svg
from anomalib_multiclass.utils.paths import category_picture_path

REPORT = "report.html"
METRICS_JSON = "per_category_metrics.json"
CATEGORY_RUNS = "category_runs.json"  # separate mode: {category: run folder, relative to the report}
PICTURES_PER_CASE = 4
CAPTION = (
    "Category rows and means: each metric on the category's raw anomaly scores and maps; mean: over the categories "
    "where the metric is defined; pooled: all images mixed, on the post-processor's normalised scores. "
    "Click a column header to sort."
)
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse}td,th{padding:3px 9px;border-bottom:1px solid #eee;text-align:right}
td:first-child,th:first-child{text-align:left}th{cursor:pointer;background:#f4f4f4;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
tbody.summary td{font-weight:600;background:#fafafa}table.info td{text-align:left}
.na{color:#999}.note,.caption{color:#555;font-size:13px}.missing{color:#b00;font-size:13px;padding:8px}
.plots{display:flex;flex-wrap:wrap;gap:8px}.plot text{font-size:10px;fill:#333}.plot .title{font-size:12px}
.cases{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;max-width:560px;border:1px solid #ddd;padding:4px}
figure img{max-width:100%;height:auto;display:block}figcaption{font-size:12px;word-break:break-all}
.rejected{color:#b00;font-weight:600}.accepted{color:#2b7bba;font-weight:600}nav a{margin-right:10px}
code{background:#f4f4f4;padding:1px 4px}
"""
SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th, column) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var ascending = th.getAttribute('aria-sort') !== 'ascending';
    table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].getAttribute('data-value'), y = b.cells[column].getAttribute('data-value');
      if (x === '' || y === '') { return (x === '') - (y === ''); }
      var nx = Number(x), ny = Number(y);
      var order = isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny;
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def _is_summary_row(name: str) -> bool:
    return name in {"mean", "pooled"} or (name.startswith("mean[") and name.endswith("]"))


def _load_metrics(run_dir: Path) -> dict[str, dict]:
    path = run_dir / METRICS_JSON
    if not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def metrics_table(metrics: Mapping[str, Mapping]) -> str:
    """The per-category table (categories sortable, summary rows below), its notes and caption."""
    if not metrics:
        return f'<p class="missing">No {METRICS_JSON} in the run folder: the test has not written its table.</p>'
    names = [k for k in next(iter(metrics.values())) if k not in {"note", "n_categories", "error_bound"}]
    header = "".join(f"<th>{escape(n)}</th>" for n in ["category", *names])
    bodies: dict[bool, list[str]] = {False: [], True: []}
    for row, values in metrics.items():
        cells = [f'<td data-value="{escape(row)}">{_category_link(row, metrics)}</td>']
        for name in names:
            value = values.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append('<td data-value="" class="na">n/a</td>')
            else:
                cells.append(f'<td data-value="{float(value)!r}">{float(value):.4f}</td>')
        bodies[_is_summary_row(row)].append(f"<tr>{''.join(cells)}</tr>")
    notes = "".join(
        f'<p class="note"><b>{escape(row)}</b>: {escape(str(values["note"]))}</p>'
        for row, values in metrics.items()
        if values.get("note")
    )
    n_categories = len(bodies[False])
    return (
        f"<h2>Per-category test metrics ({n_categories} categories)</h2>"
        f'<table id="metrics" class="sortable"><thead><tr>{header}</tr></thead>'
        f'<tbody>{"".join(bodies[False])}</tbody><tbody class="summary">{"".join(bodies[True])}</tbody></table>'
        f'{notes}<p class="caption">{escape(CAPTION)}</p>'
    )


def _anchor(category: str, order: list[str]) -> str:
    return f"category-{order.index(category)}" if category in order else ""


def _category_link(row: str, metrics: Mapping[str, Mapping]) -> str:
    if _is_summary_row(row):
        return escape(row)
    order = [r for r in metrics if not _is_summary_row(r)]
    return f'<a href="#{_anchor(row, order)}">{escape(row)}</a>'


def _link(target: Path, report_dir: Path) -> str:
    """A relative, URL-quoted and HTML-escaped link from the report to ``target``."""
    relative = os.path.relpath(target.resolve(), report_dir.resolve())
    return escape(quote(Path(relative).as_posix()))


def _case(row: ImageScore, group: CategoryScores, pictures: Path, report_dir: Path) -> str:
    picture = category_picture_path(row.image_path or "unknown.png", row.category, pictures)
    decision = group.rejected(row)
    verdict = {True: '<span class="rejected">rejected</span>', False: '<span class="accepted">accepted</span>'}
    caption = (
        f"{escape(Path(row.image_path).name or '?')} · score {row.score:.4g} · {verdict.get(decision, 'no decision')}"
        f"<br>{escape(row.image_path)}"
    )
    if picture.is_file():
        link = _link(picture, report_dir)
        body = f'<a href="{link}"><img src="{link}" alt="{escape(picture.name)}"></a>'
    else:
        shown = Path(os.path.relpath(picture.resolve(), report_dir.resolve())).as_posix()
        body = f'<div class="missing">picture not found: {escape(shown)}</div>'
    return f"<figure>{body}<figcaption>{caption}</figcaption></figure>"


def _fraction(count: int | None, total: int) -> str:
    if count is None:
        return "unknown (no threshold or decision recorded)"
    share = f" ({100 * count / total:.1f} %)" if total else ""
    return f"{count} of {total}{share}"


def category_section(group: CategoryScores, anchor: str, pictures: Path, report_dir: Path, count: int) -> str:
    """One category: counts at its threshold, score histogram, ROC and PR curves, and the worst cases."""
    normal, defective = [r.score for r in group.normal], [r.score for r in group.defective]
    threshold = group.threshold
    roc, pr = roc_pr(normal, defective)
    counts = (
        f"<p>{len(group.rows)} test images: {len(normal)} normal, {len(defective)} defective"
        + (f", {group.unlabelled} without label" if group.unlabelled else "")
        + ". Threshold (raw score): "
        + (f"<b>{threshold:.4g}</b>" if threshold is not None else "not recorded")
        + f". <b>False rejects</b> (normal called anomalous): {_fraction(group.false_rejects(), len(normal))}; "
        f"<b>misses</b> (defective called normal): {_fraction(group.misses(), len(defective))}.</p>"
    )
    plots = [histogram_svg(normal, defective, threshold)]
    if roc:
        plots.append(curve_svg(thin(roc), f"ROC (AUROC {auroc(roc):.4f})", "false positive rate", "TPR", True))
        pr_title = f"Precision-recall (AP {average_precision(pr):.4f})"
        plots.append(curve_svg(thin(pr), pr_title, "recall", "precision", False))
    else:
        missing = "normal" if not normal else "defective"
        plots.append(f'<p class="note">ROC and precision-recall undefined: no {missing} test image.</p>')
    worst_normal = "".join(_case(r, group, pictures, report_dir) for r in group.worst_normal(count))
    worst_defective = "".join(_case(r, group, pictures, report_dir) for r in group.worst_defective(count))
    return (
        f'<section class="category" id="{escape(anchor)}"><h2>{escape(group.category)}</h2>{counts}'
        f'<div class="plots">{"".join(plots)}</div>'
        f"<h3>Worst false rejects: the {min(count, len(normal))} highest-scoring normal images</h3>"
        f'<div class="cases">{worst_normal or "<p class=note>no normal test image</p>"}</div>'
        f"<h3>Worst misses: the {min(count, len(defective))} lowest-scoring defective images</h3>"
        f'<div class="cases">{worst_defective or "<p class=note>no defective test image</p>"}</div></section>'
    )


def _category_runs(run_dir: Path) -> dict[str, Path]:
    """Separate mode: each category's own run folder (its pictures and its config), else nothing."""
    path = run_dir / CATEGORY_RUNS
    if not path.is_file():
        return {}
    return {category: run_dir / folder for category, folder in json.loads(path.read_text()).items()}


def build_report(
    run_dir: str | Path, pictures_per_case: int = PICTURES_PER_CASE, config_dir: str | Path | None = None
) -> Path:
    """Write ``report.html`` into ``run_dir`` from the files the test left there; its path.

    Reads ``per_category_metrics.json``, ``per_image_scores.csv``, ``config.yaml`` (or ``config_dir``'s),
    ``run_info.json`` and, in separate mode, ``category_runs.json``; what is missing is said in the page.
    """
    run_dir = Path(run_dir)
    metrics = _load_metrics(run_dir)
    scores_path = run_dir / PER_IMAGE_SCORES
    groups = by_category(read_per_image_scores(scores_path)) if scores_path.is_file() else {}
    table_order = [r for r in metrics if not _is_summary_row(r)]
    order = table_order + [c for c in groups if c not in table_order]
    runs = _category_runs(run_dir)
    if config_dir is None and runs and not (run_dir / "config.yaml").is_file():
        config_dir = next(iter(runs.values()))  # separate mode: the runs share every setting but the category
    info = describe_run(run_dir, Path(config_dir) if config_dir is not None else None)
    if runs:
        info = [(k, f"one model per category: {', '.join(runs)}" if k == "categories" else v) for k, v in info]
    info_rows = "".join(f"<tr><th>{escape(k)}</th><td><code>{escape(v)}</code></td></tr>" for k, v in info)
    sections = [
        category_section(groups[c], _anchor(c, order), runs.get(c, run_dir) / "images", run_dir, pictures_per_case)
        for c in order
        if c in groups
    ]
    if not groups:
        sections.append(
            f'<p class="missing">No {PER_IMAGE_SCORES} in the run folder: score plots, counts and worst cases '
            "need it (the evaluator writes it after each test).</p>"
        )
    described = dict(info)
    model, data = (described.get(k, "").rsplit(".", 1)[-1] for k in ("model", "data"))
    title = f"{model} on {data}: {len(order)} categories" if model and data else f"Run report: {run_dir.name}"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = " ".join(f'<a href="#{_anchor(c, order)}">{escape(c)}</a>' for c in order if c in groups)
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{escape(title)}</h1><p class="note">Generated {generated}. Rebuild with '
        f"<code>anomalib-multiclass report {escape(str(run_dir))}</code>.</p>"
        f'<section id="run"><h2>Run</h2><table class="info">{info_rows}</table></section>'
        f'<section id="table">{metrics_table(metrics)}</section>'
        f"<nav>{nav}</nav>{''.join(sections)}<script>{SORT_SCRIPT}</script></body></html>\n"
    )
    path = run_dir / REPORT
    path.write_text(page, encoding="utf-8")
    return path
