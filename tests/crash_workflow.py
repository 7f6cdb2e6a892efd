"""A workflow run in child processes by test_crash.py (not a test module itself).

    python crash_workflow.py run    DB RUN_ID EFFECTS N BLOCK_AT   # BLOCK_AT < 0: run to the end
    python crash_workflow.py resume DB RUN_ID EFFECTS N

Every step appends its index to the EFFECTS file before it returns: the side effect whose count shows
what ran how often. At step BLOCK_AT the step, after its side effect and before it is recorded, prints
``blocked BLOCK_AT`` and waits on stdin forever, so the parent can SIGKILL the process right there.
"""

from __future__ import annotations

import hashlib
import json
import sys

from agentflow import AgentFlow, Context


def main(argv: list[str]) -> int:
    mode, db, run_id, effects, n = argv[:5]
    block_at = int(argv[5]) if mode == "run" else -1

    def work(i: int, acc: str) -> dict[str, object]:
        with open(effects, "a") as f:
            f.write(f"{i}\n")
        if i == block_at:
            print(f"blocked {i}", flush=True)
            sys.stdin.readline()  # never answered: the parent kills us here
        digest = hashlib.sha256(f"{acc}:{i}".encode()).hexdigest()
        return {"i": i, "acc": digest}

    app = AgentFlow(db)

    @app.workflow(name="crashy")
    async def crashy(ctx: Context, steps: int) -> dict[str, object]:
        token = str(ctx.uuid())
        acc = "start"
        for i in range(steps):
            out = await ctx.step("work", work, i, acc)
            acc = str(out["acc"])
        return {"acc": acc, "token_len": len(token)}

    run = app.run(crashy, int(n), run_id=run_id) if mode == "run" else app.resume(run_id)
    print(json.dumps({"status": str(run.status), "output": run.output}), flush=True)
    app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
