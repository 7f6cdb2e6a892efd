"""A run that a restart takes records out of the middle of, shared by the store and bundle tests.

``outer#0`` makes ``outer#0/inner#0`` while ``side#0`` runs beside it and is recorded before ``outer#0``
is. Restarted from ``outer#0``, the run loses ``inner#0`` too (it was in flight before that point), from
between ``first#0`` and ``side#0``; ``side#0`` is kept and its hash chain still links to ``inner#0``.
"""

from __future__ import annotations

import asyncio

from agentflow import AgentFlow, Context


def _plus_one(x: int) -> int:
    return x + 1


def nested_then_restarted(app: AgentFlow, run_id: str = "n") -> None:
    """Run ``run_id`` of the workflow above, then restart it from ``outer#0``; checks where the records went."""

    @app.workflow(name="nested")
    async def nested(ctx: Context) -> int:
        await ctx.step("first", _plus_one, 0)

        async def outer() -> int:
            inner = await ctx.step("inner", _plus_one, 1)
            await asyncio.sleep(0)  # side#0 is recorded before outer#0
            await asyncio.sleep(0)
            return inner

        a, b = await asyncio.gather(ctx.step("outer", outer), ctx.step("side", _plus_one, 2))
        return await ctx.step("last", _plus_one, a + b)

    def keys() -> list[str]:
        return [step.key for step in app.get_run(run_id).steps]

    app.run(nested, run_id=run_id)
    assert keys() == ["first#0", "outer#0/inner#0", "side#0", "outer#0", "last#0"]
    assert app.restart(run_id, from_key="outer#0").output == 6
    assert keys() == ["first#0", "side#0", "outer#0/inner#0", "outer#0", "last#0"]
    assert [(k.restart, k.step.key) for k in app.superseded_steps(run_id)] == [
        (1, "outer#0/inner#0"), (1, "outer#0"), (1, "last#0"),
    ]  # fmt: skip
