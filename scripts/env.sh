# Source this from the repository root: `source scripts/env.sh`
# Then `dagster job execute -j nomic_cycle`, `dagster dev -w workspace.yaml`, `nomic-report` work as documented.
export DAGSTER_HOME="$PWD/.dagster_home"
export DAGSTER_CLI_JOB_EXECUTE_MODULE_NAME=nomic_dagster.definitions
mkdir -p "$DAGSTER_HOME"
[ -e "$DAGSTER_HOME/dagster.yaml" ] || ln -sf ../dagster.yaml "$DAGSTER_HOME/dagster.yaml"
[ -f .venv/bin/activate ] && . .venv/bin/activate
