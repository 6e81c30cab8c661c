"""Where a test image's heat-map picture lives: one rule shared by the visualizer (writes) and the report (links)."""

from __future__ import annotations

from pathlib import Path


def category_picture_path(image_path: str, category: str | None, output_dir: Path) -> Path:
    """``output_dir/<category>/<path below the category's folder>/<name>`` (parent folder name if not found).

    Pure (creates nothing), so the report can look a picture up without touching the run folder.
    """
    path = Path(image_path)
    leaf = (category or "").split("/")[-1]
    parts = path.parts
    below = (path.parent.name,)
    if leaf and leaf in parts[:-1]:
        index = len(parts) - 2 - parts[:-1][::-1].index(leaf)
        below = parts[index + 1 : -1]
    return Path(output_dir).joinpath(*(category.split("/") if category else []), *below, path.name)
