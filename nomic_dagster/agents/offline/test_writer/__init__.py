"""The test-writer agent: characterization tests for public functions no test names.

It is a tool, not a model. It reads the repository's modules with `ast`, finds public
top-level functions whose names appear in no test file, and skips the ones it cannot
call safely (side effects, async, generators, parameters it cannot build values for).
To implement, it calls each function with inputs built from the annotations and
defaults in a probe subprocess (cwd in the scratch folder), records what came back
(plain data only) or which exception was raised, and writes one pytest function per
function that pins that behaviour. It keeps only tests that pass three runs and add
covered lines (measured with coverage.py), runs ruff on the new files, and leaves no
caches or temporary files in the worktree.

Everything is deterministic for the same repository: the inputs, their order and the
generated source depend only on the code being characterized.

The modules, in the order the work happens:

- side_effects.py: whether a function (or a module's import) may touch the world
- inputs.py: argument values from annotations, defaults and constants; the calls to make
- analysis.py: which modules and functions to characterize (ModulePlan, FunctionPlan)
- probe.py: the probe script itself (standard library only, run in a subprocess)
- probe_runner.py: running the probe with several hash seeds, keeping stable outcomes
- render.py: outcomes -> pytest source
- agent.py: TestWriter: propose, then write, rerun and select the tests
- coverage_contexts.py: the pytest plugin giving each test its own coverage context
- reports.py: reading junit XML and coverage.py JSON
- worktree.py: ruff on the new files, and removing what the runs left behind

(The package does not re-export render.render: the name would hide the render module.)
"""

from __future__ import annotations

from nomic_dagster.agents.offline.test_writer.agent import TestWriter
from nomic_dagster.agents.offline.test_writer.analysis import FunctionPlan, ModulePlan, analyse
from nomic_dagster.agents.offline.test_writer.inputs import (
    GUESS,
    Call,
    annotation_values,
    function_params,
    mine_constants,
    plan_calls,
)
from nomic_dagster.agents.offline.test_writer.side_effects import (
    direct_side_effects,
    import_aliases,
    import_time_side_effects,
    impure_functions,
)

__all__ = [
    "GUESS",
    "Call",
    "FunctionPlan",
    "ModulePlan",
    "TestWriter",
    "analyse",
    "annotation_values",
    "direct_side_effects",
    "function_params",
    "import_aliases",
    "import_time_side_effects",
    "impure_functions",
    "mine_constants",
    "plan_calls",
]
