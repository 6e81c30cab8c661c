"""What run a report is about: model, data, epochs and seed from ``config.yaml``, the command and package commit.

The command and the commit are only known while the run happens, so the in-run hook records them in
``run_info.json``; a report rebuilt later from the folder reads them back instead of describing the rebuild.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

RUN_INFO = "run_info.json"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def current_command(argv: list[str] | None = None) -> str:
    """The command line of this process, as a shell would take it."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        argv[0] = Path(argv[0]).name
    return shlex.join(argv)


def package_commit() -> str:
    """The package's git commit (``+dirty`` with uncommitted changes), else its installed version."""

    def git(*args: str) -> str:
        command = ["git", "-C", str(PACKAGE_DIR), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return f"{commit}+dirty" if dirty else commit
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"version {version('anomalib-multiclass')} (not a git checkout)"
        except PackageNotFoundError:
            return "unknown"


def record_run_info(run_dir: Path, command: str | None = None) -> dict[str, str]:
    """Write ``run_info.json`` (command, commit) for this run; what was written."""
    info = {"command": command or current_command(), "commit": package_commit()}
    (run_dir / RUN_INFO).write_text(json.dumps(info, indent=2))
    return info


def _load_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _section(config: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    value = config.get(name)
    if isinstance(value, dict):
        return str(value.get("class_path", "")), value.get("init_args") or {}
    return (str(value) if value else ""), {}


def describe_run(run_dir: Path, config_dir: Path | None = None) -> list[tuple[str, str]]:
    """``(field, value)`` rows: model, data, categories, epochs, seed, commit, command, folder."""
    config = _load_config(config_dir or run_dir)
    recorded = {}
    if (run_dir / RUN_INFO).is_file():
        try:
            recorded = json.loads((run_dir / RUN_INFO).read_text())
        except json.JSONDecodeError:
            recorded = {}
    model, _ = _section(config, "model")
    data, data_args = _section(config, "data")
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    unknown = "not recorded" if config else "no config.yaml in the run folder"
    rows = [
        ("model", model or unknown),
        ("data", data or unknown),
        ("data root", str(data_args.get("root", "")) or "-"),
        ("categories", str(data_args.get("categories") or "all")),
        ("epochs", str(trainer.get("max_epochs", unknown))),
        ("seed", str(config.get("seed_everything", unknown))),
        ("package commit", str(recorded.get("commit") or f"{package_commit()} (at report time)")),
        ("command", str(recorded.get("command") or "not recorded (report rebuilt from the folder)")),
        ("run folder", str(run_dir.resolve())),
    ]
    return rows
