"""Planning: fingerprint -> plans file (rules, topology, memory model, compute budget).

Later stages read plans with ``load_plans`` / ``get_configuration``; the CLI calls ``plan_dataset``.
"""

from autoseg.planning.plans import (  # noqa: F401
    format_plan_table,
    get_configuration,
    load_plans,
    plans_path,
    write_plans,
)
from autoseg.planning.planner import build_plans, plan_dataset  # noqa: F401
