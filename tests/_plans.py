"""Made-up results for driving the benchmark's search planner in tests (no training)."""

from __future__ import annotations

import math

from clion_hf.bench.protocol import Matrix, RunConfig


def fake_result(run: RunConfig, loss_of) -> dict:
    """A result as the planner reads it: validation loss ``loss_of(run)`` (None: diverged)."""
    value = loss_of(run)
    if value is None:
        return {"run_id": run.run_id, "workload": run.workload, "status": "diverged",
                "all_results": {"eval_loss": math.nan}}  # fmt: skip
    return {"run_id": run.run_id, "workload": run.workload, "status": "ok",
            "all_results": {"eval_loss": value, "perplexity": math.exp(value)}}  # fmt: skip


def drive_plan(matrix: Matrix, loss_of, max_rounds: int) -> tuple[dict, list[int]]:
    """Run the plan to its end with made-up results: the results and the runs per round;
    fails if the plan needs ``max_rounds`` rounds or more."""
    results: dict[str, dict] = {}
    rounds: list[int] = []
    while True:
        needed = [r for p in matrix.plan(results) for r in p.needed]
        if not needed:
            return results, rounds
        rounds.append(len(needed))
        for run in needed:
            results[run.run_id] = fake_result(run, loss_of)
        assert len(rounds) < max_rounds, "the plan never finished"
