"""Resources shared by the cycle ops."""

from __future__ import annotations

import dagster as dg


class NomicResource(dg.ConfigurableResource):
    """Where nomic keeps worktrees, clones, demo copies and the cycle history.

    Empty state_dir: $NOMIC_STATE_DIR, else $DAGSTER_HOME/nomic, else
    ~/.local/state/nomic_dagster (see `nomic_dagster.settings.state_dir`).
    """

    state_dir: str = ""
