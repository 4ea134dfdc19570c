"""The same cycle on dagster-postgres storage, against the real PostgreSQL server.

Uses deploy/postgres/dagster.yaml as shipped (env-driven, psycopg2 scheme) with a fresh
database per test. Skips when no server listens at 127.0.0.1:5432, except on CI
(NOMIC_REQUIRE_SERVICES=1), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from nomic_dagster.definitions import build_defs
from nomic_dagster.orchestration.resources import NomicResource
from nomic_dagster_tests.conftest import service_missing
from nomic_dagster_tests.support import agents_for_tests as ta
from nomic_dagster_tests.support.repo_builders import make_repo, run_git
from nomic_dagster_tests.support.run_configs import cycle_config

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]
PG = {
    "host": os.environ.get("NOMIC_PG_HOST", "127.0.0.1"),
    "port": int(os.environ.get("NOMIC_PG_PORT", "5432")),
}


def _connect(dbname: str = "postgres"):
    import psycopg2

    return psycopg2.connect(
        host=PG["host"], port=PG["port"], user="postgres", dbname=dbname, connect_timeout=3
    )


@pytest.fixture
def pg_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    try:
        admin = _connect()
    except Exception as exc:
        service_missing(f"PostgreSQL is not reachable at {PG['host']}:{PG['port']}: {exc}")
    name = f"nomic_test_{uuid.uuid4().hex[:10]}"
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    for key, value in {
        "NOMIC_PG_HOST": PG["host"],
        "NOMIC_PG_PORT": str(PG["port"]),
        "NOMIC_PG_USER": "postgres",
        "NOMIC_PG_PASSWORD": "",
        "NOMIC_PG_DB": name,
    }.items():
        monkeypatch.setenv(key, value)
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def pg_instance(pg_database: str, tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    home = tmp_path / "pg_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "postgres" / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        yield instance


def test_cycle_on_postgres_storage(
    pg_instance: dg.DagsterInstance, pg_database: str, state_dir: Path, tmp_path: Path
) -> None:
    assert type(pg_instance.run_storage).__name__ == "PostgresRunStorage"
    repo = make_repo(tmp_path / "target", ta.GATE_REPO)
    job = build_defs({"nomic": NomicResource(state_dir=str(state_dir))}).get_job_def(
        "nomic_cycle_qa"
    )
    result = job.execute_in_process(
        instance=pg_instance,
        run_config=cycle_config(repo=str(repo), agents=[ta.spec(ta.GoodAgent)]),
        tags={"nomic/cycle_id": "pg-1"},
    )
    assert result.success
    record = result.output_for_node("record_cycle_op")
    assert record.outcome.value == "committed", record.reason
    assert run_git(repo, "rev-parse", "nomic/qa/pg-1").strip() == record.commit_sha

    # read back through SQL, not through Dagster, to prove it is in PostgreSQL
    with _connect(pg_database) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,))
        assert cur.fetchone() == ("SUCCESS",)
        cur.execute("SELECT partition FROM dynamic_partitions WHERE partitions_def_name = 'cycles'")
        assert cur.fetchall() == [("pg-1",)]
        cur.execute(
            "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
            "AND asset_key LIKE %s AND partition = 'pg-1'",
            ("%cycle_records%",),
        )
        assert cur.fetchone() == (1,)
