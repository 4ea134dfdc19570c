"""Instance folders: a DAGSTER_HOME with the project's dagster.yaml, rooted somewhere else.

The root dagster.yaml keeps its state under ./.dagster_home (relative to the cwd). Tests,
benchmarks and scripts that need an isolated instance use `isolated_home`, which writes
the same configuration (run limits, logging) with every storage path inside `home`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LOCAL_INSTANCE_YAML = PROJECT_ROOT / "dagster.yaml"


def isolated_home(home: Path) -> Path:
    """Create `home` with a dagster.yaml equal to the project's, storage rooted in `home`."""
    home.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(LOCAL_INSTANCE_YAML.read_text())
    config["storage"] = {"sqlite": {"base_dir": str(home)}}
    config["local_artifact_storage"]["config"]["base_dir"] = str(home)
    config["compute_logs"]["config"]["base_dir"] = str(home / "logs")
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return home
