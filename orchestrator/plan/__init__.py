"""`orchestrator plan`: parameters, FLOPs, memory, layout, wall time, cost and checkpoint interval.

Everything here is arithmetic on the run.yaml and a small hardware table, so a run can be sized and its
layout chosen before a GPU is spent. ``build_plan`` returns a :class:`Plan` (a dataclass) that ``submit``
can print first; ``format_plan`` renders it with rich; ``plan_to_dict`` gives the JSON form.
"""

from orchestrator.plan.build import Plan, build_plan
from orchestrator.plan.report import format_plan, plan_to_dict

__all__ = ["Plan", "build_plan", "format_plan", "plan_to_dict"]
