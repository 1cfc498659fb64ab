"""The report stage: one table of every model's suite scores, the change against Instruct, a chart.

Rows are models (Instruct, Shadow-FT, the baselines), columns are suites plus their mean (the
paper's "overall" is the mean of group means). Written as JSON (for machines), markdown (for the
Prefect UI and humans) and a PNG bar chart.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from shadowft.evaluate.results import filtered_score
from shadowft.tables import chance_cells, markdown_row, markdown_table, pct, with_change

REFERENCE_MODEL = "instruct"
#: The suite of the user's own held-out data (`shadowft.evaluate.own_data`) and its filter.
OWN_DATA = "own-data"
OWN_DATA_FILTER = "strip"
#: Decimal places of every fraction written to a summary (0.1 % is 0.001; 6 places hide float noise
#: such as -0.020000000000000018 without losing anything a table shows).
DIGITS = 6


def rounded(x: Any) -> Any:
    """`x` with every float rounded to `DIGITS` places (dicts and lists recursively), -0.0 as 0.0."""
    if isinstance(x, float):
        return round(x, DIGITS) + 0.0
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [rounded(v) for v in x]
    return x


def suite_stderr(suite: dict[str, Any]) -> float | None:
    """Standard error of a suite's score (the mean of its tasks' scores): lm-eval's per-task stderr
    combined as sqrt(sum se^2) / k; None when a task has none (e.g. a metric without one)."""
    tasks = suite.get("tasks") or {}
    errs = [t.get("stderr") for t in tasks.values()]
    if not errs or any(e is None for e in errs):
        return None
    return math.sqrt(sum(e * e for e in errs)) / len(errs)


def summarize(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`results`: model name -> an evaluate `results.json` dict. Returns the summary record."""
    suites: list[str] = []
    for r in results.values():
        for s in r["suites"]:
            if s not in suites:
                suites.append(s)
    chance = {
        s: next((r["suites"][s].get("chance") for r in results.values() if s in r["suites"]), None) for s in suites
    }
    if OWN_DATA in suites:  # last, and apart from the mean: the user's data, not a benchmark
        suites = [s for s in suites if s != OWN_DATA] + [OWN_DATA]
    rows: dict[str, dict[str, float | None]] = {}
    for model, r in results.items():
        scores = {s: (r["suites"][s]["score"] if s in r["suites"] else None) for s in suites}
        vals = [v for s, v in scores.items() if v is not None and s != OWN_DATA]
        scores["mean"] = sum(vals) / len(vals) if vals else None
        rows[model] = scores
    ref = rows.get(REFERENCE_MODEL)
    change = {
        model: {
            s: (v - start) if (ref is not None and v is not None and (start := ref.get(s)) is not None) else None
            for s, v in scores.items()
        }
        for model, scores in rows.items()
    }
    n = {s: next((r["suites"][s].get("n") for r in results.values() if s in r["suites"]), None) for s in suites}
    stderr = {
        model: {s: (suite_stderr(r["suites"][s]) if s in r["suites"] else None) for s in suites}
        for model, r in results.items()
    }
    return rounded(
        {
            "suites": suites,
            "chance": chance,
            "n": n,
            "scores": rows,
            "stderr": stderr,
            "change_vs_instruct": change,
            "reference": REFERENCE_MODEL,
            "backends": {model: r.get("backend", "hf") for model, r in results.items()},
            **({"own_data": own_data_scores(results)} if OWN_DATA in suites else {}),
            **({"carried": carried_by_suite(rows, suites, n)} if CARRIED_MODELS <= rows.keys() else {}),
        }
    )


#: The rows the carried share needs (the run's `tuned-base` baseline adds Base and the tuned Base).
SHADOW_MODEL, TUNED_BASE_MODEL = "shadow-ft", "tuned-base"
CARRIED_MODELS = frozenset({REFERENCE_MODEL, "base", TUNED_BASE_MODEL, SHADOW_MODEL})


def carried_by_suite(
    rows: dict[str, dict[str, float | None]], suites: list[str], n: dict[str, int | None]
) -> dict[str, dict[str, Any]]:
    """Per suite, the share of the tuned Base's gain over Base that the graft added to Instruct (one
    seed: shown where the gain is beyond the binomial standard error of the two scores' difference)."""
    from shadowft.compare import carried_share  # compare imports this module

    return {
        s: carried_share(
            {"-": rows[SHADOW_MODEL][s]},
            {"-": rows[TUNED_BASE_MODEL][s]},
            rows[REFERENCE_MODEL][s],
            rows["base"][s],
            n[s],
        )
        for s in suites
    }


def carried_markdown(summary: dict[str, Any]) -> list[str]:
    """The run report's carried line: per suite the share in %, "—" (with why) where the tuned Base's gain
    is within the noise."""
    share = summary.get("carried")
    if not share:
        return []
    suites = [s for s in summary["suites"] if s in share]
    from shadowft.compare import carried_cell  # compare imports this module

    cells = [carried_cell(share[s]) for s in suites]
    why = [f"- {s}: {share[s]['why']}." for s in suites if not share[s]["shown"]]
    return [
        "## Carried: how much of what tuning taught Base the graft brought to Instruct",
        "",
        "(shadow-ft - instruct) / (tuned-base - base) per suite, in %: 100, the graft added to Instruct as much "
        "as tuning added to Base; 0, none of it. Shown where the tuned Base's gain is beyond the binomial "
        "standard error of the two scores' difference (one seed; `shadowft compare` gives the spread over seeds). "
        "Base and tuned-base are scored alike, with the chat template where Base's tokenizer has one.",
        "",
        *markdown_table(["", *suites], [["carried (%)", *cells]]),
        *(["", "Not shown (—):", "", *why] if why else []),
    ]


def own_data_scores(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per model, the own-data suite's exact match (its score) and chrF (the softer text overlap)."""
    out: dict[str, dict[str, float | None]] = {}
    for model, r in results.items():
        suite = (r.get("suites") or {}).get(OWN_DATA)
        if suite is None:
            continue
        out[model] = {
            "exact_match": suite.get("score"),
            "chrf": filtered_score(suite, OWN_DATA_FILTER, "chrf"),
            "n": suite.get("n"),
        }
    return out


def own_data_note(summary: dict[str, Any]) -> str | None:
    """The own-data line under a score table: what the column is, and each model's chrF beside it."""
    own = summary.get("own_data")
    if not own:
        return None
    chrf = ", ".join(f"{m} {pct(v.get('chrf'))}" for m, v in own.items())
    return (
        f"**{OWN_DATA}**: your data's held-out split, the greedy reply against the reference; exact match in the "
        f"table (not in the mean), chrF (text overlap, %): {chrf}. Replies side by side: `samples.md` in the run "
        "folder."
    )


def backend_note(summary: dict[str, Any]) -> str | None:
    """A warning when the models were evaluated by different backends (their scores differ by engine)."""
    backends = summary.get("backends") or {}
    if len(set(backends.values())) <= 1:
        return None
    return "**Mixed evaluation backends** (scores are not strictly comparable): " + ", ".join(
        f"{m}: {b}" for m, b in backends.items()
    )


def table_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """Rows for a table artifact: model, then score (change vs Instruct) per suite and the mean."""
    rows = []
    for model, scores in summary["scores"].items():
        row = {"model": model}
        for s in [*summary["suites"], "mean"]:
            d = summary["change_vs_instruct"][model].get(s)
            row[s] = with_change(pct(scores.get(s)), None if model == summary["reference"] else d)
        rows.append(row)
    return rows


def chance_row(summary: dict[str, Any], style: str | None = None) -> dict[str, str]:
    """The chance level per suite in % (no mean: chance of a mean of suites is not meaningful);
    `style` wraps each value in rich markup for the terminal."""
    cells = dict(zip(summary["suites"], chance_cells(summary, summary["suites"])))
    if style:
        cells = {k: f"[{style}]{v}[/]" if v != "-" else "" for k, v in cells.items()}
    return cells


def to_markdown(summary: dict[str, Any], title: str = "Shadow-FT results") -> str:
    cols = [*summary["suites"], "mean"]
    lines = [
        f"# {title}",
        "",
        "Scores in % (change against Instruct in parentheses). Chance level and items per suite below the table.",
        "",
        *markdown_table(["model", *cols], [[row["model"], *(row[c] for c in cols)] for row in table_rows(summary)]),
        markdown_row(["*chance*", *chance_cells(summary, summary["suites"]), ""]),
        markdown_row(["*items*", *(str(summary["n"].get(s) or "-") for s in summary["suites"]), ""]),
    ]
    for note in (own_data_note(summary), backend_note(summary)):
        if note:
            lines += ["", note]
    if carried := carried_markdown(summary):
        lines += ["", *carried]
    return "\n".join(lines) + "\n"


def bar_chart(
    path: Path,
    columns: list[str],
    series: dict[str, list[float]],
    chance: dict[str, float | None],
    title: str,
    errors: dict[str, list[float]] | None = None,
    hatched: set[str] | frozenset[str] = frozenset(),
) -> Path:
    """Grouped bars in %: one group per column, one bar per series (optional error bars and
    hatching), each column's chance level as a dashed tick. Shared by the run and comparison reports."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.85 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(columns), 3.8), dpi=110)
    cmap = plt.get_cmap("tab20")
    for i, (name, vals) in enumerate(series.items()):
        xs = [x + i * width - 0.425 + width / 2 for x in range(len(columns))]
        err = [100 * e for e in errors[name]] if errors else None
        ax.bar(
            xs,
            [100 * v for v in vals],
            width,
            yerr=err,
            capsize=2,
            label=name,
            color=cmap(i % 20),
            hatch="//" if name in hatched else None,
            edgecolor="white",
            linewidth=0.3,
        )
    for x, col in enumerate(columns):
        c = chance.get(col)
        if c:
            ax.hlines(100 * c, x - 0.45, x + 0.45, colors="gray", linestyles="dashed", linewidth=1)
    ax.set_xticks(range(len(columns)), columns)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def draw_chart(summary: dict[str, Any], path: Path) -> Path:
    """The run report's chart: suites (and their mean) on the x axis, one bar per model."""
    cols = [*summary["suites"], "mean"]
    series = {m: [summary["scores"][m].get(c) or 0.0 for c in cols] for m in summary["scores"]}
    stderr = summary.get("stderr") or {}
    errors = {m: [(stderr.get(m) or {}).get(c) or 0.0 for c in cols] for m in summary["scores"]}
    title = "Shadow-FT vs baselines (error bars: standard error; dashed: chance)"
    return bar_chart(path, cols, series, summary["chance"], title, errors=errors if stderr else None)


def write_report(results: dict[str, dict[str, Any]], out_dir: Path, title: str = "Shadow-FT results") -> dict[str, Any]:
    """Write `summary.json`, `report.md` and `chart.png` into `out_dir`; return the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "report.md").write_text(to_markdown(summary, title))
    draw_chart(summary, out_dir / "chart.png")
    return summary


# -- run history: each run's summary under its name, and the comparison with the previous run ------


def history_path(store_root: Path | str, name: str) -> Path:
    """`<store root>/runs/<name>/history.jsonl`: one line per run of that name (oldest first)."""
    import re

    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"
    return Path(store_root) / "runs" / slug / "history.jsonl"


def read_history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line of a crashed writer
            continue
    return entries


def record_run(path: Path, summary: dict[str, Any], run_id: str, **info: Any) -> dict[str, Any] | None:
    """Append this run's summary to the history (once per `run_id`) and return the previous run's
    entry (the latest one of another run), or None for the first run of this name."""
    import time

    entries = read_history(path)
    previous = next((e for e in reversed(entries) if e.get("run_id") != run_id), None)
    if not any(e.get("run_id") == run_id for e in entries):
        entry = {
            "run_id": run_id,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **info,
            "suites": summary["suites"],
            "scores": summary["scores"],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:  # one write of one line: appends do not interleave
            f.write(json.dumps(entry) + "\n")
    return previous


def compare_markdown(summary: dict[str, Any], previous: dict[str, Any] | None, report_key: str | None = None) -> str:
    """A "vs previous run" section: each model's scores now and the change since the previous run
    (`report_key`: this run's report artifact key; equal to the previous one = nothing changed)."""
    if previous is None:
        return "## vs previous run\n\nFirst run of this name: nothing to compare with yet.\n"
    cols = [*summary["suites"], "mean"]
    label = previous.get("run_name") or previous.get("run_id", "?")
    same = report_key is not None and previous.get("report_key") == report_key
    lines = [
        "## vs previous run",
        "",
        f"Previous run: `{label}` at {previous.get('time', '?')}"
        + (" (same inputs: results reused from the cache)." if same else "."),
        "Scores in % now (change since the previous run in parentheses; `new` = not in the previous run).",
        "",
    ]
    rows = []
    for model, scores in summary["scores"].items():
        before = previous.get("scores", {}).get(model)
        cells = []
        for s in cols:
            now, old = scores.get(s), (before or {}).get(s)
            if now is None:
                cells.append("-")
            elif old is None:
                cells.append(f"{pct(now)} (new)")
            else:
                cells.append(with_change(pct(now), now - old))
        rows.append([model, *cells])
    lines += markdown_table(["model", *cols], rows)
    return "\n".join(lines) + "\n"
