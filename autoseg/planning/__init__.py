"""Planning: fingerprint -> plans file (rules, topology, memory model, compute budget).

Later stages read plans with ``autoseg.planning.plans.load_plans`` / ``get_configuration``; the CLI
calls ``autoseg.planning.planner.plan_dataset``. Nothing is imported here, so that stages that only
read plans or use the rules (preprocessing) do not pay for importing torch.
"""
