"""Locust load shapes.  Imported by the locustfile only when ``LOADTEST_SHAPE=step``.

Locust uses any non-abstract ``LoadTestShape`` it finds among the locustfile's globals, unconditionally;
keeping the class here and importing it on demand is what makes the step load optional.
"""

from __future__ import annotations

from locust import LoadTestShape

from loadtest.config import LoadConfig
from loadtest.steps import StepPlan


def build_plan(config: LoadConfig, num_users: int | None, spawn_rate: float | None, run_time: float | None) -> StepPlan:
    """Resolve the step parameters against Locust's common options (``-u``, ``-r``, ``-t``).

    ``-u`` is the ceiling and ``-t`` the time bound, so the runner's ``--users``/``--run-time`` keep their
    meaning under the step shape.  Without ``-u`` the load climbs five steps.
    """
    step = config.step
    step_users = step.step_users or config.user_set_size()
    start_users = step.start_users or step_users
    max_users = step.max_users or num_users or start_users + 4 * step_users
    rate = step.spawn_rate or spawn_rate or float(step_users)
    return StepPlan(
        start_users=start_users,
        step_users=step_users,
        step_time_s=step.step_time_s,
        max_users=max(max_users, start_users),
        spawn_rate=rate,
        time_limit_s=run_time or None,
    )


class StepLoadShape(LoadTestShape):
    """Step load: more users every ``LOADTEST_STEP_TIME`` seconds until ``-u`` or ``-t`` is reached.

    ``use_common_options`` lets the shape read ``-u/-r/-t``; Locust would otherwise ignore them, and it
    never applies ``--run-time`` itself while a shape runs.
    """

    use_common_options = True
    config: LoadConfig | None = None  # set by the locustfile

    def __init__(self) -> None:
        super().__init__()
        self._plan: StepPlan | None = None

    @property
    def plan(self) -> StepPlan:
        if self._plan is None:
            if self.config is None:
                raise RuntimeError("StepLoadShape.config is not set")
            options = self.runner.environment.parsed_options if self.runner is not None else None
            self._plan = build_plan(
                self.config,
                getattr(options, "num_users", None),
                getattr(options, "spawn_rate", None),
                getattr(options, "run_time", None),
            )
        return self._plan

    def tick(self) -> tuple[int, float] | None:
        return self.plan.target(self.get_run_time())
