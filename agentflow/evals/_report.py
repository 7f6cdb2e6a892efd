"""Reports of an eval result or of a comparison: a rich table for the terminal, markdown (a pull request
comment, a CI summary), and a self-contained HTML file (no scripts, no links: it opens anywhere).

All three show the same things: the aggregates (pass rate, per-scorer pass rates and means, tokens, cost),
the verdict when there is one, and the per-case table: for a comparison, each case's change (regressed,
fixed...), its score deltas, its token and cost deltas, and why it changed (the failing scores and the
first point where its trajectory went another way).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ._compare import Comparison
from ._results import EvalResult

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["Section", "to_html", "to_markdown", "to_rich"]

Subject = EvalResult | Comparison


@dataclass(frozen=True)
class Section:
    """One suite's part of a report: an eval result or a comparison, and its verdict (None: not gated;
    [] passed; else the reasons it failed)."""

    subject: Subject
    verdict: Sequence[str] | None = None

    @property
    def title(self) -> str:
        if isinstance(self.subject, Comparison):
            return f"{self.subject.candidate.suite}: {self.subject.candidate.mode} {self.subject.candidate.id}"
        return f"{self.subject.suite}: {self.subject.mode} {self.subject.id}"


# -- the table, independent of the output format --------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) < 10 and value != int(value) else f"{value:,.0f}"


def _signed(value: float, money: bool = False) -> str:
    if money:
        return "0" if value == 0 else f"{'+' if value > 0 else '-'}${abs(value):.6f}"
    return "0" if value == 0 else f"{value:+,.0f}" if value == int(value) else f"{value:+.3g}"


def _verdict_text(passed: bool) -> str:
    return "pass" if passed else "FAIL"


def _score_cell(scores: Sequence[Any]) -> str:
    return ", ".join(f"{s.name}={_num(s.value)}" + ("" if s.passed is not False else "✗") for s in scores)


def _headers(subject: Subject) -> list[str]:
    if isinstance(subject, Comparison):
        return [
            "case",
            "baseline",
            "candidate",
            "change",
            "score deltas",
            "Δ tokens",
            "Δ cost",
            "why / first divergence",
        ]
    return ["case", "status", "result", "scores", "tokens", "cost", "failures"]


def _rows(subject: Subject) -> list[list[str]]:
    rows = []
    if isinstance(subject, Comparison):
        for c in subject.cases:
            deltas = ", ".join(f"{n} {_signed(d)}" for n, d in c.score_deltas(measurements=False).items() if d)
            rows.append([
                c.case_id,
                "-" if c.baseline is None else _verdict_text(c.baseline.passed),
                "-" if c.candidate is None else _verdict_text(c.candidate.passed),
                c.change if c.changed or c.change in ("fixed", "regressed") else "unchanged",
                deltas or "-",
                _signed(c.token_delta),
                _signed(c.cost_delta, money=True),
                c.why() or "-",
            ])  # fmt: skip
        return rows
    for case in subject.cases:
        failures = "; ".join(f"{s.name}: {s.explanation}" for s in case.failures)
        if case.status == "error":
            failures = f"no run: {case.error}"
        rows.append([
            case.case_id, case.status, _verdict_text(case.passed), _score_cell(case.scores),
            f"{case.total_tokens:,}", f"${case.cost:.6f}", failures or "-",
        ])  # fmt: skip
    return rows


def _summary(subject: Subject) -> list[str]:
    if isinstance(subject, EvalResult):
        lines = [
            f"{len(subject.cases)} cases, {subject.passed_count} passed: pass rate {_pct(subject.pass_rate)}",
            f"tokens {subject.total_tokens:,}, cost ${subject.cost:.6f}",
        ]
        for name, agg in subject.aggregates().items():
            lines.append(f"{name}: pass rate {_pct(agg['pass_rate'])}, mean {_num(agg['mean'])}")
        return lines
    b, c = subject.baseline, subject.candidate
    changed = subject.changed
    lines = [
        f"pass rate {_pct(b.pass_rate)} -> {_pct(c.pass_rate)} ({subject.pass_rate_delta * 100:+.0f} points)",
        f"tokens {b.total_tokens:,} -> {c.total_tokens:,} ({_signed(subject.token_delta)}), "
        f"cost ${b.cost:.6f} -> ${c.cost:.6f} ({_signed(subject.cost_delta, money=True)})",
        f"{len(changed)} of {len(subject.cases)} cases changed: {len(subject.of('regressed'))} regressed, "
        f"{len(subject.of('fixed'))} fixed",
    ]
    for name, row in subject.scorer_deltas().items():
        lines.append(
            f"{name}: pass rate {_pct(row['baseline_pass_rate'])} -> {_pct(row['candidate_pass_rate'])}, "
            f"mean {_num(row['baseline_mean'])} -> {_num(row['candidate_mean'])}"
        )
    return lines


def _about(subject: Subject) -> str:
    if isinstance(subject, Comparison):
        b, c = subject.baseline, subject.candidate
        return (f"baseline {b.id} ({b.mode}{', ' + b.candidate if b.candidate else ''}) vs candidate {c.id} "
                f"({c.mode}{', ' + c.candidate if c.candidate else ''}), dataset {c.dataset}")  # fmt: skip
    who = f", candidate {subject.candidate}" if subject.candidate else ""
    return f"{subject.mode} of dataset {subject.dataset}{who}"


def _verdict_lines(verdict: Sequence[str] | None) -> list[str]:
    if verdict is None:
        return []
    if not verdict:
        return ["PASSED: the thresholds hold and nothing regressed"]
    return ["FAILED: " + problem for problem in verdict]


# -- terminal -----------------------------------------------------------------------------------------------


def to_rich(subject: Subject, verdict: Sequence[str] | None = None) -> RenderableType:
    """The report as a rich renderable (print it with a ``rich.console.Console``).

    A terminal is narrow, so the table keeps the short columns (for an eval: how many scorers each case
    passed; for a comparison: the verdicts, the change, token and cost deltas) and the explanations follow
    it, one line a case: why each failing or changed case is what it is. Markdown and HTML have it all in
    the table.
    """
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    section = Section(subject, verdict)
    table = Table(box=box.SIMPLE_HEAD, title=section.title, title_justify="left")
    headers = _headers(subject)
    rows = _rows(subject)
    notes: list[tuple[str, str, str]] = []  # case, label, explanation
    if isinstance(subject, EvalResult):
        keep = [0, 1, 2, 3, 4, 5]
        headers[3] = "scorers"
        for row, case in zip(rows, subject.cases, strict=True):
            verdicts = [s.passed for s in case.scores if s.passed is not None]
            row[3] = f"{sum(1 for v in verdicts if v)}/{len(verdicts)}"
            if row[6] != "-":
                notes.append((row[0], "failed", row[6]))
    else:
        keep = [0, 1, 2, 3, 5, 6]
        for row in rows:
            if row[7] != "-":
                notes.append((row[0], row[3], row[7]))
    for i in keep:
        right = headers[i].startswith("Δ") or headers[i] in ("tokens", "cost", "scorers")
        table.add_column(headers[i], no_wrap=i != 0, overflow="fold", justify="right" if right else "left")
    styles = {"regressed": "bold red", "fixed": "green", "FAIL": "red", "pass": "green", "new": "cyan"}
    for row in rows:
        table.add_row(*(Text(row[i], style=styles.get(row[i], "")) for i in keep))
    parts: list[RenderableType] = [Text(_about(subject), style="dim"), table]
    for case_id, label, why in notes:
        note = Text("  ")
        note.append(case_id, style="bold")
        note.append(f" ({label})" if label not in ("-", "failed") else "", style=styles.get(label, ""))
        note.append(f": {why}")
        parts.append(note)
    if notes:
        parts.append(Text(""))
    parts += [Text(line) for line in _summary(subject)]
    for line in _verdict_lines(verdict):
        parts.append(Text(line, style="bold green" if line.startswith("PASSED") else "bold red"))
    return Group(*parts)


# -- markdown -----------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(sections: Subject | Section | Sequence[Section], *, title: str = "agentflow eval") -> str:
    """The report as GitHub-flavoured markdown: per suite, its aggregates, verdict and per-case table."""
    out = [f"# {title}", ""]
    for section in _sections(sections):
        out += [f"## {section.title}", "", f"_{_about(section.subject)}_", ""]
        out += [f"- {line}" for line in _summary(section.subject)]
        out += [f"- **{line}**" for line in _verdict_lines(section.verdict)]
        headers = _headers(section.subject)
        out += ["", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        out += ["| " + " | ".join(_md_cell(cell) for cell in row) + " |" for row in _rows(section.subject)]
        out.append("")
    return "\n".join(out)


# -- html -----------------------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #1d2330; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
.about { color: #5a6270; } ul.summary { padding-left: 1.2em; }
.verdict.pass { color: #12733a; font-weight: 600; } .verdict.fail { color: #b3261e; font-weight: 600; }
table.cases { border-collapse: collapse; margin-top: .8em; width: 100%; }
table.cases th, table.cases td { border-bottom: 1px solid #dde1e8; padding: .35em .6em; text-align: left;
  vertical-align: top; }
table.cases th { background: #f3f5f8; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tr.regressed td { background: #fdecea; } tr.fixed td { background: #e8f6ee; }
.FAIL { color: #b3261e; font-weight: 600; } .pass { color: #12733a; }
"""


def to_html(sections: Subject | Section | Sequence[Section], *, title: str = "agentflow eval") -> str:
    """The report as one self-contained HTML page: styles inline, no scripts, no external links. Each
    suite's per-case table is ``<table class="cases" data-suite="...">``."""
    e = html.escape
    now = datetime.now(tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>{e(title)}</h1>", f'<p class="about">written {e(now)}</p>']
    for section in _sections(sections):
        subject = section.subject
        suite = subject.candidate.suite if isinstance(subject, Comparison) else subject.suite
        body.append(f"<h2>{e(section.title)}</h2>")
        body.append(f'<p class="about">{e(_about(subject))}</p>')
        body.append('<ul class="summary">' + "".join(f"<li>{e(line)}</li>" for line in _summary(subject)) + "</ul>")
        for line in _verdict_lines(section.verdict):
            kind = "pass" if line.startswith("PASSED") else "fail"
            body.append(f'<p class="verdict {kind}">{e(line)}</p>')
        headers = _headers(subject)
        numeric = {i for i, h in enumerate(headers) if h.startswith("Δ") or h in ("tokens", "cost")}
        body.append(f'<table class="cases" data-suite="{e(suite)}"><thead><tr>'
                    + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr></thead><tbody>")  # fmt: skip
        for row in _rows(subject):
            change = row[3] if isinstance(subject, Comparison) else ""
            cells = []
            for i, cell in enumerate(row):
                classes = [c for c in ("num" if i in numeric else "", cell if cell in ("pass", "FAIL") else "") if c]
                attr = f' class="{" ".join(classes)}"' if classes else ""
                cells.append(f"<td{attr}>{e(cell)}</td>")
            row_class = f' class="{e(change)}"' if change in ("regressed", "fixed") else ""
            body.append(f"<tr{row_class}>" + "".join(cells) + "</tr>")
        body.append("</tbody></table>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{e(title)}</title><style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _sections(sections: Subject | Section | Sequence[Section]) -> list[Section]:
    if isinstance(sections, Section):
        return [sections]
    if isinstance(sections, (EvalResult, Comparison)):
        return [Section(sections)]
    return list(sections)
