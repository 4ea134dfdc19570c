"""The state folder rule (core.settings.state_dir): every documented command agrees."""

from __future__ import annotations

from pathlib import Path

import pytest

from nomic_dagster.core.settings import PROJECT_ROOT, CycleSettings, project_home, state_dir


def test_the_order_ends_at_the_checkouts_dagster_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("NOMIC_STATE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    assert state_dir(CycleSettings(state_dir=str(tmp_path / "s"))) == tmp_path / "s"
    assert state_dir() == tmp_path / "explicit"
    monkeypatch.delenv("NOMIC_STATE_DIR")
    assert state_dir() == tmp_path / "dh" / "nomic"  # what `make demo` / scripts/env.sh give
    monkeypatch.delenv("DAGSTER_HOME")
    # Neither set (a bare `dagster job execute -m ...`, `nomic history`, `nomic-report`):
    # the same folder `make demo` wrote, not ~/.local/state.
    assert project_home() == PROJECT_ROOT / ".dagster_home"
    assert state_dir() == PROJECT_ROOT / ".dagster_home" / "nomic"
    assert not (tmp_path / "home" / ".local" / "state" / "nomic_dagster").exists()
