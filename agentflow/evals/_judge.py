"""An LLM judge whose every call is recorded, so re-scoring is reproducible and free.

Each judgement is a small run of its own (workflow ``agentflow.eval-judge``) whose id is a hash of what is
judged: the case, the scorer's name, the judged answer and tool calls, the rubric and the model. The first
scoring calls the model and records the call; a second scoring of the same thing finds the finished run
and reads its answer back, without calling anything. Change the rubric, the model or the answer and it is
a new judgement. A judge run that failed (the provider was down) is run again the next time.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._secrets import strip_secrets
from ..errors import ConfigurationError
from ._dataset import JUDGE_WORKFLOW
from ._scorers import Score, Scorer
from ._trajectory import Trajectory

if TYPE_CHECKING:
    from .._app import AgentFlow
    from .._context import Context
    from ._dataset import Case

__all__ = ["LLMJudge", "llm_judge"]

_SYSTEM = (
    "You grade an AI assistant's work against a rubric. Reply with one JSON object and nothing else: "
    '{"score": <a number from 0 to 1>, "explanation": "<one sentence: why>"}'
)
# Parameters that reach the provider but are never recorded (API keys): held here while a judge call runs.
_SECRETS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "agentflow_judge_secrets", default=None
)


async def _judge_workflow(ctx: Context, request: dict[str, Any]) -> str:
    """One judgement: a recorded model call on the prompt the judge built; its answer's text."""
    params = {**request.get("params", {}), **(_SECRETS.get() or {})}
    response = await ctx.llm(model=request["model"], messages=request["messages"], **params)
    return response.text or ""


class LLMJudge(Scorer):
    """A scorer that asks a model to grade a run against ``rubric``: a number from 0 to 1 and why.

    The judge sees the case's input, the run's answer and the tool calls it made. ``threshold`` is the
    score needed to pass. ``params`` go to the model call (``temperature``, ``api_base``...; an API key
    reaches the provider but is never recorded). It needs the ``AgentFlow`` it records its calls in, so it
    scores inside ``evaluate`` (or through ``score_async(run, case, app)``), not as a plain function.
    """

    def __init__(
        self,
        rubric: str,
        *,
        model: str,
        name: str = "judge",
        threshold: float = 0.5,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        if not rubric.strip():
            raise ConfigurationError("an LLM judge needs a rubric: what a good answer does")
        self.rubric = rubric
        self.model = model
        self.name = name
        self.threshold = threshold
        given = dict(params or {})
        self._params = strip_secrets(given)
        # A parameter left out, or recorded without its secret parts (an api_base with a password in it,
        # extra_headers with an Authorization): given to the model as it was given.
        self._secrets = {k: v for k, v in given.items() if k not in self._params or self._params[k] != v}

    def score(self, run: Trajectory, case: Case | None = None) -> Score:
        raise ConfigurationError(
            f"the LLM judge {self.name!r} records its calls in a database: score through evaluate(..., app=app) "
            "or await judge.score_async(run, case, app)"
        )

    def messages(self, run: Trajectory, case: Case | None) -> list[dict[str, str]]:
        """What the judge model is asked."""
        question = case.prompt if case is not None else (run.input.get("args") or [None])[0]
        calls = "\n".join(f"- {call.label()}" + ("" if call.ok else f" -> error: {call.error}")
                          for call in run.tool_calls) or "(none)"  # fmt: skip
        answer = run.output if isinstance(run.output, str) else json.dumps(run.output, default=str)
        user = (
            f"Rubric:\n{self.rubric}\n\nThe user asked:\n{_as_text(question)}\n\n"
            f"Tool calls the assistant made:\n{calls}\n\nThe assistant's answer:\n{answer}"
        )
        return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]

    def judgement_id(self, run: Trajectory, case: Case | None) -> str:
        """The id of the judge run for this answer: the same inputs, the same recorded judgement."""
        key = {
            "case": case.id if case is not None else run.run_id,
            "scorer": self.name,
            "answer": run.output,
            "tool_calls": [[c.name, c.arguments, c.ok] for c in run.tool_calls],
            "rubric": self.rubric,
            "model": self.model,
            "params": self._params,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
        return f"judge-{digest[:32]}"

    async def score_async(self, run: Trajectory, case: Case | None, app: AgentFlow | None) -> Score:
        if app is None:
            return self.score(run, case)
        from .._models import RunStatus

        app.register(_judge_workflow, name=JUDGE_WORKFLOW)
        run_id = self.judgement_id(run, case)
        request = {"model": self.model, "messages": self.messages(run, case), "params": self._params}
        token = _SECRETS.set(self._secrets)
        try:
            judged = await app.run_async(_judge_workflow, request, run_id=run_id)
            if judged.status == RunStatus.FAILED:  # recorded as failed: try once more, now
                judged = await app.restart_async(run_id)
        finally:
            _SECRETS.reset(token)
        if judged.status != RunStatus.COMPLETED:
            return Score(self.name, 0.0, False, f"the judge call failed ({judged.error}); judge run {run_id}")
        return self._read(str(judged.output or ""))

    def _read(self, text: str) -> Score:
        found = re.search(r"\{.*\}", text, re.DOTALL)
        try:
            data = json.loads(found.group(0) if found else text)
            value = float(data["score"])
            why = str(data.get("explanation") or "")
        except (ValueError, TypeError, KeyError):
            why = f'the judge did not answer {{"score", "explanation"}} JSON: {text[:120]!r}'
            return Score(self.name, 0.0, False, why)
        value = min(max(value, 0.0), 1.0)
        return Score(self.name, value, value >= self.threshold, why or f"judged {value:g}")


def llm_judge(
    rubric: str,
    *,
    model: str,
    name: str = "judge",
    threshold: float = 0.5,
    params: Mapping[str, Any] | None = None,
) -> LLMJudge:
    """An ``LLMJudge``: a model grades each run against ``rubric``; every judgement is a recorded run."""
    return LLMJudge(rubric, model=model, name=name, threshold=threshold, params=params)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)
