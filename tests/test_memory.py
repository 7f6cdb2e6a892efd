"""Agent memory: conversations cut to a tiktoken budget (window, running summary) and durable facts.

The summary calls go through litellm's real code path against the fake provider; facts live in the
``facts`` table, on SQLite and (when configured) Postgres.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from dbtools import execute

from agentflow import AgentFlow, ConfigurationError, Context, FakeClock, RunStatus, SyncContext
from agentflow._store._open import open_store
from agentflow._tokens import count_prompt_tokens
from agentflow.memory import SUMMARY_HEADER, ConversationMemory, LongTermMemory, window
from agentflow.testing import FakeProvider, reply, tool_call

MODEL = "gpt-4o-mini"
KEY = "sk-fake"
SYSTEM = {"role": "system", "content": "You are a terse support agent."}


class Crash(BaseException):
    """Stands for the process dying mid-run."""


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def calls(*ids: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": "lookup_order", "arguments": json.dumps({"id": i})}}
            for i in ids
        ],
    }


def result(call_id: str, text: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def chat(turns: int) -> list[dict[str, Any]]:
    """A system message and ``turns`` user/assistant exchanges, each message a few dozen tokens."""
    messages = [SYSTEM]
    for i in range(turns):
        messages.append(user(f"question {i}: " + "where is my parcel, it was due last week " * 2))
        messages.append(assistant(f"answer {i}: " + "it left the warehouse and is on its way " * 2))
    return messages


def tokens(messages: list[dict[str, Any]]) -> int:
    return count_prompt_tokens(MODEL, messages)


def crash_when(state: dict[str, bool]) -> Any:
    def maybe_crash() -> None:
        if state["crash"]:
            raise Crash

    return maybe_crash


# -- window -------------------------------------------------------------------------------------------------


def test_window_fits_the_budget_counted_with_tiktoken_and_keeps_the_newest_messages() -> None:
    messages = chat(12)
    budget = tokens(messages) // 3

    kept = window(MODEL, messages, budget)

    assert tokens(kept) <= budget
    assert kept[0] == SYSTEM
    suffix = kept[1:]
    assert suffix == messages[len(messages) - len(suffix) :]  # the newest messages, in order
    assert len(suffix) >= 2
    # Only what had to go went: one more message back would not fit.
    assert tokens([SYSTEM, *messages[len(messages) - len(suffix) - 1 :]]) > budget


def test_window_returns_the_conversation_unchanged_when_it_fits() -> None:
    messages = chat(3)

    assert window(MODEL, messages, tokens(messages)) == messages
    assert ConversationMemory(max_tokens=tokens(messages)).window(MODEL, messages) == messages


def test_window_keeps_system_messages_wherever_they_are() -> None:
    messages = chat(6)
    note = {"role": "system", "content": "The user is a premium customer."}
    messages.insert(5, note)
    developer = {"role": "developer", "content": "Answer in English."}
    messages.insert(2, developer)

    kept = window(MODEL, messages, tokens(messages) // 2)

    assert [m for m in kept if m["role"] in ("system", "developer")] == [SYSTEM, developer, note]
    assert kept[-2:] == messages[-2:]
    assert tokens(kept) <= tokens(messages) // 2


def test_window_counts_the_tools_sent_with_the_prompt() -> None:
    from agentflow import tool

    @tool
    def lookup_order(order_id: str, include_history: bool = False) -> str:
        """Look up an order by its id and say where it is, with its full delivery history if asked."""
        return order_id

    messages = chat(8)
    budget = tokens(messages) // 2
    with_tools = window(MODEL, messages, budget, tools=[lookup_order])

    assert count_prompt_tokens(MODEL, with_tools, [lookup_order.schema()]) <= budget
    assert len(with_tools) < len(window(MODEL, messages, budget))


def test_a_tool_call_is_never_split_from_its_results() -> None:
    messages = [
        SYSTEM,
        user("Where are orders A-1 and A-2? " + "I need them urgently. " * 5),
        calls("A-1", "A-2"),
        result("A-1", "A-1 shipped on Monday " * 4),
        result("A-2", "A-2 is still in the warehouse " * 4),
        assistant("A-1 has shipped; A-2 is still in the warehouse. " * 2),
        user("And order B-7?"),
        calls("B-7"),
        result("B-7", "B-7 was delivered yesterday " * 4),
        assistant("B-7 was delivered yesterday."),
    ]
    outcomes = set()
    for budget in range(1, tokens(messages) + 1):
        for keep_last in (0, 1, 2):
            try:
                kept = window(MODEL, messages, budget, keep_last=keep_last)
            except ConfigurationError:
                continue
            assert tokens(kept) <= budget
            answered = {c["id"] for m in kept if m.get("tool_calls") for c in m["tool_calls"]}
            results = {m["tool_call_id"] for m in kept if m["role"] == "tool"}
            assert answered == results, (budget, keep_last, kept)
            rest = [m for m in kept if m["role"] != "system"]
            assert not rest or rest[0]["role"] != "tool"
            outcomes.add(len(kept))
    assert len(outcomes) > 4  # many different cuts were tried


def test_keep_last_takes_the_tool_call_along_with_its_result() -> None:
    messages = [SYSTEM, user("Where is B-7? " * 20), calls("B-7"), result("B-7", "delivered")]

    kept = window(MODEL, messages, tokens([SYSTEM, *messages[2:]]), keep_last=1)

    assert kept == [SYSTEM, messages[2], messages[3]]


def test_a_budget_too_small_for_the_last_messages_is_a_clear_error() -> None:
    messages = chat(4)
    need = tokens([SYSTEM, *messages[-2:]])

    assert tokens(window(MODEL, messages, need)) <= need
    with pytest.raises(ConfigurationError, match=r"budget of \d+ is too small .* last 2 messages"):
        window(MODEL, messages, need - 1)
    with pytest.raises(ConfigurationError, match="max_tokens"):
        ConversationMemory(max_tokens=0)
    with pytest.raises(ConfigurationError, match="strategy"):
        ConversationMemory(max_tokens=100, strategy="forget")  # type: ignore[arg-type]


def test_window_strategy_fit_inside_a_workflow_makes_no_model_call(app: AgentFlow) -> None:
    memory = ConversationMemory(max_tokens=tokens(chat(12)) // 3)
    messages = chat(12)

    @app.workflow()
    async def trim(ctx: Context) -> list[dict[str, Any]]:
        return await memory.fit(ctx, MODEL, messages)

    with FakeProvider() as fake:
        run = app.run(trim)
        assert fake.call_count == 0

    assert run.output == window(MODEL, messages, memory.max_tokens)
    assert run.steps == []


# -- summarize ----------------------------------------------------------------------------------------------


def summarizing(max_tokens: int, **options: Any) -> ConversationMemory:
    return ConversationMemory(
        max_tokens=max_tokens,
        strategy="summarize",
        summary_tokens=40,
        summary_params={"api_key": KEY, "temperature": 0},
        **options,
    )


def is_summary_request(body: dict[str, Any], memory: ConversationMemory) -> bool:
    return bool(body["messages"][0]["content"] == memory.summary_prompt)


def test_summarize_folds_only_newly_dropped_messages_into_the_running_summary(app: AgentFlow) -> None:
    memory = summarizing(max_tokens=tokens(chat(3)) + 30)
    questions = [f"question {i}: " + "where is my parcel, it was due last week " * 2 for i in range(8)]
    prompts: list[list[dict[str, Any]]] = []
    state = {"crash": True}

    @app.workflow()
    async def conversation(ctx: Context, questions: list[str]) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = [SYSTEM]
        for question in questions:
            messages.append(user(question))
            prompt = await memory.fit(ctx, MODEL, messages)
            prompts.append(prompt)
            answer = await ctx.llm(model=MODEL, messages=prompt, api_key=KEY)
            messages.append(answer.message())
        await ctx.step("crash", crash_when(state))
        return prompts[-1]

    summaries = iter(f"summary {n}" for n in range(1, 100))
    answers = iter(range(100))

    def respond(body: dict[str, Any]) -> Any:
        if is_summary_request(body, memory):
            return reply(next(summaries))
        return reply(f"answer {next(answers)}: " + "it left the warehouse and is on its way " * 2)

    with FakeProvider() as fake:
        fake.default = respond
        with pytest.raises(Crash):
            app.run(conversation, questions, run_id="r")
        summary_calls = [c for c in fake.calls if is_summary_request(c, memory)]

    # Every prompt sent fits, and ends with the newest question.
    for prompt in prompts:
        assert tokens(prompt) <= memory.max_tokens
        assert prompt[0] == SYSTEM and prompt[-1]["role"] == "user"
    # The summary calls: the first starts a summary, each later one extends the one before it with
    # the messages dropped since, and nothing is summarized twice.
    assert len(summary_calls) >= 2
    folded: list[str] = []
    for n, body in enumerate(summary_calls):
        assert body["model"] == MODEL and body["max_tokens"] == 40 and body["temperature"] == 0
        text = body["messages"][1]["content"]
        if n == 0:
            assert "Summary so far" not in text
        else:
            assert text.startswith(f"Summary so far:\nsummary {n}\n\n")
        lines = text.split("Messages to add to the summary:\n", 1)[1].splitlines()
        assert lines and not set(lines) & set(folded)
        folded += lines
    assert folded[0].startswith("user: question 0:")
    # The last prompt holds the last summary in place of everything it dropped.
    last = prompts[-1]
    assert last[1] == {"role": "system", "content": f"{SUMMARY_HEADER}summary {len(summary_calls)}"}
    assert last[2]["role"] in ("user", "assistant") and "question 0" not in json.dumps(last[2:])
    # One summary call per turn that had to drop more (the conversation grows every turn, so each turn
    # once it overflows), each adding only that turn's newly dropped messages.
    summarized_turns = [p for p in prompts if p[1]["content"].startswith(SUMMARY_HEADER)]
    assert len(summary_calls) == len(summarized_turns) < len(questions)

    # Resumed, the summaries are served from the record: the provider is not called at all.
    state["crash"] = False
    recorded = prompts[:]
    prompts.clear()
    with FakeProvider() as fake:
        run = app.resume("r")
        assert fake.call_count == 0
    assert run.status == RunStatus.COMPLETED, run.error
    assert prompts == recorded
    assert run.output == recorded[-1]


def test_fitting_the_same_conversation_twice_asks_for_one_summary(app: AgentFlow) -> None:
    messages = chat(8)
    memory = summarizing(max_tokens=tokens(messages) // 2)

    @app.workflow()
    async def twice(ctx: Context) -> bool:
        first = await memory.fit(ctx, MODEL, messages)
        second = await memory.fit(ctx, MODEL, messages)
        return first == second

    with FakeProvider() as fake:
        fake.script(reply("the user waits for a parcel"))
        run = app.run(twice)
        assert fake.call_count == 1

    assert run.output is True
    assert [s.key for s in run.steps] == ["llm#0"]


def test_summaries_are_kept_apart_per_run(app: AgentFlow) -> None:
    messages = chat(8)
    memory = summarizing(max_tokens=tokens(messages) // 2)

    @app.workflow()
    async def one(ctx: Context) -> str:
        prompt = await memory.fit(ctx, MODEL, messages)
        return str(prompt[1]["content"])

    with FakeProvider() as fake:
        fake.script(reply("first"), reply("second"))
        assert app.run(one).output == SUMMARY_HEADER + "first"
        assert app.run(one).output == SUMMARY_HEADER + "second"  # a new run summarizes for itself
        assert fake.call_count == 2


def test_a_summary_too_long_for_the_budget_makes_the_memory_drop_more_and_fold_it_in(app: AgentFlow) -> None:
    messages = chat(6)
    memory = summarizing(max_tokens=tokens(messages) // 2, keep_last=1)
    long_summary = "the user waits for a parcel that was due last week " * 10  # far more than the 40 reserved

    @app.workflow()
    async def fit(ctx: Context) -> list[dict[str, Any]]:
        return await memory.fit(ctx, MODEL, messages)

    with FakeProvider() as fake:
        fake.script(reply(long_summary), reply("short"))
        run = app.run(fit)
        assert fake.call_count == 2
        assert fake.calls[1]["messages"][1]["content"].startswith(f"Summary so far:\n{long_summary}\n\n")

    assert run.output[1]["content"] == SUMMARY_HEADER + "short"
    assert tokens(run.output) <= memory.max_tokens


def test_summarize_in_a_sync_workflow(app: AgentFlow) -> None:
    messages = chat(8)
    memory = summarizing(max_tokens=tokens(messages) // 2)

    @app.workflow()
    def fit(ctx: SyncContext) -> list[dict[str, Any]]:
        return memory.fit(ctx, MODEL, messages)

    with FakeProvider() as fake:
        fake.script(reply("the user waits for a parcel"))
        run = app.run(fit)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output[:2] == [SYSTEM, {"role": "system", "content": SUMMARY_HEADER + "the user waits for a parcel"}]
    assert tokens(run.output) <= memory.max_tokens


# -- long-term facts ----------------------------------------------------------------------------------------


def test_facts_persist_across_app_instances(db_url: str) -> None:
    memory = LongTermMemory("support")

    def define(app: AgentFlow) -> None:
        @app.workflow(name="learn")
        async def learn(ctx: Context, language: str) -> None:
            await memory.remember(ctx, "user/language", language)
            await memory.remember(ctx, "user/orders", ["A-1", "A-2"])

        @app.workflow(name="use")
        async def use(ctx: Context) -> dict[str, Any]:
            language = await memory.recall(ctx, "user/language")
            missing = await memory.recall(ctx, "user/name", default="there")
            return {"language": language, "missing": missing, "all": await memory.recall_all(ctx)}

    with AgentFlow(db_url, clock=FakeClock(start=1000.0)) as app:
        define(app)
        app.run("learn", "fr", run_id="learn-1")
    with AgentFlow(db_url) as app:
        define(app)
        run = app.run("use")

    assert run.output == {
        "language": "fr",
        "missing": "there",
        "all": {"user/language": "fr", "user/orders": ["A-1", "A-2"]},
    }
    rows = execute(db_url, "SELECT key, value, run_id, updated_at FROM facts ORDER BY key")
    assert rows == [("user/language", '"fr"', "learn-1", 1000.0), ("user/orders", '["A-1","A-2"]', "learn-1", 1000.0)]
    assert [s.key for s in run.steps] == ["memory.recall#0", "memory.recall#1", "memory.recall_all#0"]


def test_namespaces_are_isolated(app: AgentFlow) -> None:
    alice, bob = LongTermMemory("alice"), LongTermMemory("bob")

    @app.workflow()
    async def both(ctx: Context) -> list[Any]:
        await alice.remember(ctx, "color", "blue")
        await bob.remember(ctx, "color", "green")
        forgot = await bob.forget(ctx, "color")
        forgot_again = await bob.forget(ctx, "color")
        return [await alice.recall(ctx, "color"), await bob.recall(ctx, "color"), forgot, forgot_again]

    assert app.run(both).output == ["blue", None, True, False]


def test_recall_all_takes_a_literal_prefix(app: AgentFlow) -> None:
    memory = LongTermMemory("agent")

    @app.workflow()
    async def prefixes(ctx: Context) -> list[dict[str, Any]]:
        for key in ("a_1", "ab", "a%b", "a_2", "b"):
            await memory.remember(ctx, key, key.upper())
        return [await memory.recall_all(ctx, prefix="a_"), await memory.recall_all(ctx, prefix="a%")]

    assert app.run(prefixes).output == [{"a_1": "A_1", "a_2": "A_2"}, {"a%b": "A%B"}]


def test_a_resumed_run_is_served_recorded_reads_and_writes_despite_table_changes(db_url: str) -> None:
    memory = LongTermMemory("support")
    state = {"crash": True}

    def define(app: AgentFlow) -> None:
        @app.workflow(name="profile")
        async def profile(ctx: Context) -> dict[str, Any]:
            await memory.remember(ctx, "plan", "premium")
            plan = await memory.recall(ctx, "plan")
            everything = await memory.recall_all(ctx)
            await ctx.step("crash", crash_when(state))
            return {"plan": plan, "all": everything, "after": await memory.recall(ctx, "plan")}

    with AgentFlow(db_url) as app:
        define(app)
        with pytest.raises(Crash):
            app.run("profile", run_id="r")
    # Behind the run's back: the value changes and another fact appears.
    execute(db_url, "UPDATE facts SET value = :v WHERE key = 'plan'", v='"basic"')
    execute(db_url, "INSERT INTO facts VALUES ('support', 'x', '1', 0, NULL)")
    state["crash"] = False
    with AgentFlow(db_url) as app:
        define(app)
        run = app.resume("r")

    assert run.status == RunStatus.COMPLETED, run.error
    # What was read before the crash is served from the record; the read after it sees the table now.
    assert run.output == {"plan": "premium", "all": {"plan": "premium"}, "after": "basic"}
    # The recorded write was not made again: the table still holds the change.
    assert execute(db_url, "SELECT value FROM facts WHERE key = 'plan'") == [('"basic"',)]


def test_long_term_memory_in_a_sync_workflow(app: AgentFlow) -> None:
    memory = LongTermMemory("sync")

    @app.workflow()
    def remember(ctx: SyncContext) -> list[Any]:
        memory.remember(ctx, "n", 1)
        return [memory.recall(ctx, "n"), memory.recall_all(ctx), memory.forget(ctx, "n"), memory.recall(ctx, "n", 0)]

    run = app.run(remember)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == [1, {"n": 1}, True, 0]


def test_a_model_keeps_and_looks_up_facts_through_the_memory_tools(app: AgentFlow) -> None:
    memory = LongTermMemory("assistant")

    @app.workflow()
    async def agent(ctx: Context) -> list[Any]:
        tools = memory.as_tools(ctx)
        by_name = {t.name: t for t in tools}
        messages: list[dict[str, Any]] = [user("I prefer email. What do you know about me?")]
        outputs = []
        for _ in range(2):
            answer = await ctx.llm(model=MODEL, messages=messages, tools=tools, api_key=KEY)
            messages.append(answer.message())
            for call in answer.tool_calls:
                done = await ctx.tool(by_name[call.name], **call.args())
                outputs.append(done.value)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": done.content})
        return outputs

    with FakeProvider() as fake:
        fake.script(
            tool_call("remember_fact", {"key": "user/contact", "value": "email"}),
            tool_call("recall_facts", {"prefix": "user/"}),
        )
        run = app.run(agent)
        names = [t["function"]["name"] for t in fake.calls[0]["tools"]]

    assert names == ["remember_fact", "recall_facts"]
    assert run.output == ["remembered user/contact", {"user/contact": "email"}]
    assert [s.kind for s in run.steps] == ["llm", "tool", "llm", "tool"]


def test_bad_long_term_memory_arguments_are_clear_errors(app: AgentFlow) -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        LongTermMemory("")
    memory = LongTermMemory("m")

    @app.workflow()
    async def bad(ctx: Context) -> None:
        await memory.remember(ctx, "", 1)

    run = app.run(bad)
    assert run.status == RunStatus.FAILED and "fact key" in str(run.error)


# -- the store's facts --------------------------------------------------------------------------------------


def test_store_facts_upsert_filter_and_delete(db_url: str) -> None:
    store = open_store(db_url)
    try:
        store.put_fact("n", "k1", '"a"', "run-1", updated_at=1.0)
        store.put_fact("n", "k2", "2", None, updated_at=2.0)
        store.put_fact("other", "k1", "true", "run-2")
        store.put_fact("n", "k1", '"b"', "run-3", updated_at=3.0)  # replaces

        assert store.get_facts("n") == {"k1": '"b"', "k2": "2"}
        assert store.get_facts("n", keys=["k2", "missing"]) == {"k2": "2"}
        assert store.get_facts("n", keys=[]) == {}
        assert store.get_facts("n", prefix="k1") == {"k1": '"b"'}
        assert store.get_facts("n", keys=["k1", "k2"], prefix="k2") == {"k2": "2"}
        assert store.get_facts("other") == {"k1": "true"}
        assert store.delete_fact("n", "k1") is True
        assert store.delete_fact("n", "k1") is False
        assert store.get_facts("n") == {"k2": "2"}
    finally:
        store.close()
    assert execute(db_url, "SELECT run_id, updated_at FROM facts WHERE namespace = 'n'") == [(None, 2.0)]
