"""``Run._repr_html_``: a run shown in a notebook cell, its header and its steps, escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from agentflow import AgentFlow, Context, RetryPolicy
from agentflow._html import MAX_STEPS
from agentflow.testing import FakeProvider, reply

SHOUT = "<script>alert('hi')</script>"  # text from a record: shown as text, never as markup


def cells(html: str) -> list[str]:
    """The text of every table cell, the HTML parsed as XML: it must be well formed."""
    root = ElementTree.fromstring(html)
    return ["".join(cell.itertext()) for cell in root.iter() if cell.tag in ("td", "th")]


def test_a_run_shows_its_header_and_its_steps_with_model_answers_and_errors(app: AgentFlow) -> None:
    def refuse(order: str) -> str:
        raise ValueError(f"cannot refund {order}: {SHOUT}")

    @app.workflow(name="support")
    async def support(ctx: Context, question: str) -> str:
        answer = await ctx.llm(model="gpt-4o-mini", messages=[{"role": "user", "content": question}], api_key="sk-x")
        await ctx.step("refund", refuse, "A-1", retry=RetryPolicy(max_attempts=2, delay=0))
        return answer.text or ""

    with FakeProvider() as fake:
        fake.script(reply(f"Sure {SHOUT}", usage=(11, 2)))
        run = app.run(support, "refund A-1?", run_id="shown")

    html = run._repr_html_()
    assert SHOUT not in html and "&lt;script&gt;" in html
    shown = cells(html)
    assert "failed" in shown
    assert "13 tokens, cost $0.00000285" in shown  # gpt-4o-mini's prices in litellm's map: 11 x 0.15 + 2 x 0.6 / 1M
    assert f"[11+2 tok] Sure {SHOUT}" in shown  # the model call, by its answer
    assert "failed (2 attempts)" in shown
    assert any(text.startswith(f"ValueError: cannot refund A-1: {SHOUT}") for text in shown)
    assert "llm#0" in shown and "refund#0" in shown
    assert any("refund A-1?" in text for text in shown)  # the input


def test_a_long_run_shows_its_first_steps_and_counts_the_rest(app: AgentFlow) -> None:
    @app.workflow(name="long")
    async def long(ctx: Context, n: int) -> int:
        for i in range(n):
            await ctx.step("tick", abs, i)
        return n

    run = app.run(long, MAX_STEPS + 25, run_id="long")
    shown = cells(run._repr_html_())
    assert f"tick#{MAX_STEPS - 1}" in shown and f"tick#{MAX_STEPS}" not in shown
    assert "… and 25 more steps (run.steps)" in shown
    assert "completed" in shown and "75" in shown  # its output
