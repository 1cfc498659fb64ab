"""The run folder: what a person opens after a run, and the promotion gate of nightly re-tunes.

Each run gets `<output.root>/<name>/<YYYYmmdd-HHMMSS>/` (and `<name>/latest` pointing at it):

    report.md      what was run (pair, data, training, graft, evaluation), the scores with their
                   standard errors, the stage times, links to everything below
    summary.json   the scores (fractions, rounded once) and the same description as data
    chart.png      scores per suite and model, error bars = standard error
    loss.png       the training loss curves
    config.yaml    the run's resolved config (re-run it with `shadowft run config.yaml`)
    artifacts.json the store artifacts the run used or built (stage, key, path)
    samples.md     with a validation split: each model's replies to held-out prompts beside the reference

The artifacts stay in the content-addressed store; the folder only points at them.

Promotion (`output.promote`): the new Shadow-FT model replaces the last promoted one of the same run
name (`<name>/promoted`) only if no suite drops by more than `output.max_regression` points;
otherwise `PromotionRefused` (a `ShadowFTError`) carries the table of drops.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shadowft.cluster import describe_placement, placements
from shadowft.errors import ShadowFTError
from shadowft.files import umask
from shadowft.report import DIGITS, REFERENCE_MODEL, carried_markdown, own_data_note, rounded, suite_stderr
from shadowft.tables import markdown_table, pct

PROMOTED_MODEL = "shadow-ft"


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "run"


def name_dir(output_root: str | Path, name: str | None) -> Path:
    """`<output.root>/<name>`: every run of that name, `latest`, `promoted` and `history.jsonl`."""
    return Path(output_root).expanduser().absolute() / slug(name or "shadow-ft")


def _manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# -- what was run --------------------------------------------------------------------------------


def describe(config: dict[str, Any], stages: dict[str, Path], evals: dict[str, Path], started: float) -> dict[str, Any]:
    """The facts behind the scores, read from the config and the artifacts' manifests and files.

    `config`: the resolved run config (JSON); `stages`: label -> artifact dir ("pair", "data",
    "train-base", "train-instruct", "delta", "graft-shadow-ft", ...); `evals`: model -> eval artifact
    dir; `started`: the run's start (epoch seconds), to tell stages built now from reused ones."""
    pair_m = _manifest(stages["pair"]) if "pair" in stages else {}
    data_stats = _read_json(stages["data"] / "data" / "stats.json") if "data" in stages else None
    train = {}
    for label, path in stages.items():
        if label.startswith("train-"):
            info = _manifest(path).get("train", {})
            tc = config.get("train", {})
            devices = int(info.get("world_size") or info.get("devices") or 1)
            train[label.removeprefix("train-")] = {
                "objective": tc.get("objective"),
                "method": info.get("method", tc.get("method")),
                "steps": info.get("global_step"),
                "epochs": info.get("epochs_done"),
                "lr": info.get("lr"),
                "global_batch": tc.get("batch_size", 1) * tc.get("grad_accum", 1) * devices,
                "precision": info.get("precision"),
                "device": info.get("device"),
                "devices": devices,
                "final_loss": info.get("final_loss"),
                "seconds": info.get("seconds"),
            }
    first_eval = _read_json(next(iter(evals.values())) / "results.json") if evals else None
    eval_info: dict[str, Any] = {"suites": config.get("eval", {}).get("suites")}
    if first_eval:
        eval_info.update(
            backend=first_eval.get("backend"),
            chat_template=first_eval.get("chat_template"),
            limit=first_eval.get("limit"),
            items={s: v.get("n") for s, v in first_eval.get("suites", {}).items()},
            metrics={s: v.get("metric") for s, v in first_eval.get("suites", {}).items()},
            lm_eval_version=first_eval.get("lm_eval_version"),
        )
    times = []
    where: dict[str, dict[str, Any]] = {}  # build id -> where it was built (heavy stages record it)
    for label, path in [*stages.items(), *((f"eval-{m}", p) for m, p in evals.items())]:
        m = _manifest(path)
        created = m.get("created")
        reused = isinstance(created, str) and datetime.fromisoformat(created).timestamp() < started - 1
        if not where and len(path.parents) > 2:  # <store>/artifacts/<stage>/<key>
            where = placements(path.parents[2])
        ran_on = where.get(m.get("build_id", ""))
        times.append(
            {"stage": label, "seconds": m.get("seconds"), "reused": reused, "key": m.get("key"), "ran_on": ran_on}
        )
    pair = config.get("pair", {})
    return rounded(
        {
            "pair": {
                "base": pair.get("base"),
                "instruct": pair.get("instruct"),
                "sigma_mean": pair_m.get("sigma_mean"),
                "max_sigma": pair.get("max_sigma"),
            },
            "data": {
                "sources": [s.get("source") for s in (data_stats or {}).get("sources", [])]
                or config.get("data", {}).get("sources"),
                "samples": (data_stats or {}).get("samples"),
                "tokens": (data_stats or {}).get("tokens"),
                "assistant_tokens": (data_stats or {}).get("assistant_tokens"),
                "max_length": config.get("data", {}).get("max_length"),
            },
            "train": train,
            "graft": {k: config.get("graft", {}).get(k) for k in ("alpha", "scope")},
            "eval": eval_info,
            "stage_times": times,
        }
    )


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 0.01 or abs(x) >= 1000 else f"{x:.4g}"
    return str(x)


def score_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Markdown rows: model, then `score ± stderr (change)` per suite in %, then the mean."""
    rows = []
    stderr = summary.get("stderr", {})
    for model, scores in summary["scores"].items():
        cells = [model]
        for s in [*summary["suites"], "mean"]:
            v, se = scores.get(s), (stderr.get(model) or {}).get(s)
            cell = pct(v) + (f" ± {pct(se)}" if se is not None and v is not None else "")
            d = summary["change_vs_instruct"].get(model, {}).get(s)
            if model != summary.get("reference", REFERENCE_MODEL) and d is not None:
                cell += f" ({pct(d, signed=True)})"
            cells.append(cell)
        rows.append(cells)
    return rows


def report_markdown(title: str, summary: dict[str, Any], run: dict[str, Any]) -> str:
    """The run folder's report.md: what produced the scores, the scores, the stage times."""
    p, d, g, e = run["pair"], run["data"], run["graft"], run["eval"]
    note = own_data_note(summary)
    lines = [
        f"# {title}",
        "",
        f"Finished {datetime.now(timezone.utc).isoformat(timespec='seconds')}; the files named below sit beside "
        "this report in its run folder.",
        "",
        "## Scores",
        "",
        "In % ± standard error (change against Instruct in percentage points).",
        "",
        *markdown_table(["model", *summary["suites"], "mean"], score_rows(summary)),
        "",
        *([note.replace("`samples.md` in the run folder", "[samples.md](samples.md)"), ""] if note else []),
        *([*carried, ""] if (carried := carried_markdown(summary)) else []),
        "![scores](chart.png) ![loss](loss.png)",
        "",
        "## What was run",
        "",
        f"- **pair**: base `{p['base']}`, instruct `{p['instruct']}`; mean sigma {_fmt(p['sigma_mean'])}"
        f" (refused above {_fmt(p['max_sigma'])})",
        f"- **data**: {', '.join(f'`{s}`' for s in d['sources'] or [])}; {_fmt(d['samples'])} samples, "
        f"{_fmt(d['tokens'])} tokens ({_fmt(d['assistant_tokens'])} trained on), cutoff {_fmt(d['max_length'])}",
    ]
    for role, t in run["train"].items():
        lines.append(
            f"- **training ({role})**: {t['objective']} / {t['method']}, {_fmt(t['steps'])} steps, lr {_fmt(t['lr'])}, "
            f"global batch {_fmt(t['global_batch'])}, {t['precision']} on {_fmt(t['devices'])} x {t['device']}, "
            f"final loss {_fmt(t['final_loss'])}, {_fmt(t['seconds'])} s"
        )
    lines += [
        f"- **graft**: alpha {_fmt(g['alpha'])}, scope `{g['scope']}`",
        f"- **evaluation**: suites {', '.join(e.get('suites') or [])}; backend {e.get('backend', '-')}, "
        f"chat template {'on' if e.get('chat_template') else 'off'}, items "
        + ", ".join(f"{s} {n}" for s, n in (e.get("items") or {}).items())
        + f"; lm-eval {e.get('lm_eval_version', '-')}",
        "",
        "## Stage times",
        "",
        *markdown_table(
            ["stage", "seconds", "this run", "ran on"],
            [
                [
                    t["stage"],
                    _fmt(t["seconds"]),
                    "reused" if t["reused"] else "built",
                    describe_placement(t.get("ran_on")),
                ]
                for t in run["stage_times"]
            ],
        ),
        "",
        "Files: [summary.json](summary.json), [config.yaml](config.yaml), [artifacts.json](artifacts.json) "
        "(the store artifacts behind this run).",
        "",
    ]
    return "\n".join(lines)


#: Held-out prompts shown in `samples.md`, and the longest a cell of it gets (characters).
SAMPLE_ROWS = 8
SAMPLE_CELL = 160


def _cell(text: Any) -> str:
    """A markdown table cell: one line, pipes escaped, long text cut with an ellipsis."""
    one = " ".join(str(text).split()).replace("|", "\\|")
    return one if len(one) <= SAMPLE_CELL else one[: SAMPLE_CELL - 1] + "…"


def _own_data_rows(eval_dir: Path) -> dict[int, dict[str, Any]]:
    from shadowft.evaluate.own_data import OWN_DATA_TASK

    file = eval_dir / f"samples_{OWN_DATA_TASK}.jsonl"
    rows: dict[int, dict[str, Any]] = {}
    if file.is_file():
        for line in file.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                rows[int(row["doc_id"])] = row
            except (ValueError, KeyError, TypeError):
                continue
    return rows


def samples_markdown(evals: dict[str, Path], limit: int = SAMPLE_ROWS) -> str | None:
    """`samples.md`: each model's greedy reply to the first held-out prompts of the user's data (the
    own-data suite's per-sample logs) beside the reference, a mark for an exact match. None when no
    evaluation ran own-data."""
    per_model = {m: _own_data_rows(p) for m, p in evals.items()}
    per_model = {m: r for m, r in per_model.items() if r}
    if not per_model:
        return None
    ids = sorted(set().union(*(r.keys() for r in per_model.values())))[:limit]
    first = next(iter(per_model.values()))
    lines = [
        "# Sample replies on your held-out data",
        "",
        f"The first {len(ids)} held-out prompts of the `own-data` suite, the reference reply and each model's "
        "greedy reply (✓ = exact match). Every reply is in the evaluations' `samples_own_data.jsonl`.",
        "",
    ]
    rows = []
    for i in ids:
        doc = next((r[i]["doc"] for r in per_model.values() if i in r), first.get(i, {}).get("doc", {}))
        cells = [_cell(doc.get("question", "")), _cell(doc.get("answer", ""))]
        for rows_of_model in per_model.values():
            row = rows_of_model.get(i)
            if row is None:
                cells.append("-")
                continue
            reply = row.get("filtered_resps") or row.get("resps") or [""]
            while isinstance(reply, list):
                reply = reply[0] if reply else ""
            cells.append(("✓ " if row.get("exact_match") == 1 else "") + (_cell(reply) or "(empty)"))
        rows.append(cells)
    lines += markdown_table(["prompt", "reference", *per_model], rows, text_columns=2 + len(per_model))
    return "\n".join(lines) + "\n"


def loss_chart(path: Path, curves: dict[str, list[dict[str, float]]]) -> Path:
    """Training loss against step, one line per trained model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.8), dpi=110)
    for role, curve in curves.items():
        if curve:
            ax.plot([c["step"] for c in curve], [c["loss"] for c in curve], label=role, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss", fontsize=9)
    if curves:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _link(link: Path, target: Path) -> None:
    """Point `link` at `target` atomically (a relative symlink, replaced by rename)."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.path.relpath(target, link.parent))
    os.replace(tmp, link)


def publish_run(
    output_root: str | Path,
    name: str | None,
    title: str,
    config: dict[str, Any],
    stages: dict[str, Path],
    evals: dict[str, Path],
    report_dir: Path,
    models: dict[str, str],
    started: float,
) -> Path:
    """Write the run folder (in a temp dir, renamed when complete) and point `<name>/latest` at it."""
    import yaml

    base = name_dir(output_root, name)
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    folder = base / stamp  # the final name is taken at the rename (two runs may start in the same second)
    summary = json.loads((report_dir / "summary.json").read_text())
    if "stderr" not in summary:  # a report built before stderr was summarized
        summary["stderr"] = {
            m: {s: suite_stderr(v) for s, v in (_read_json(p / "results.json") or {}).get("suites", {}).items()}
            for m, p in evals.items()
        }
    run = describe(config, stages, evals, started)
    tmp = base / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / "summary.json").write_text(
            json.dumps(rounded({**summary, "title": title, "run": run, "models": models}), indent=2) + "\n"
        )
        (tmp / "report.md").write_text(report_markdown(title, summary, run))
        shutil.copyfile(report_dir / "chart.png", tmp / "chart.png")
        curves = {
            label.removeprefix("train-"): _read_json(p / "loss_curve.json") or []
            for label, p in stages.items()
            if label.startswith("train-")
        }
        loss_chart(tmp / "loss.png", curves)
        samples = samples_markdown(evals)
        if samples:
            (tmp / "samples.md").write_text(samples)
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        index = {
            label: {"key": _manifest(p).get("key"), "path": str(p)}
            for label, p in [*stages.items(), *((f"eval-{m}", p) for m, p in evals.items()), ("report", report_dir)]
        }
        (tmp / "artifacts.json").write_text(json.dumps({"artifacts": index, "models": models}, indent=2) + "\n")
        os.chmod(tmp, 0o777 & ~umask())
        folder = _rename_to_free_name(tmp, base, stamp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _link(base / "latest", folder)
    return folder


def _rename_to_free_name(tmp: Path, base: Path, stamp: str) -> Path:
    """Rename `tmp` to `base/stamp`, or `stamp-2`, `-3`, ... when taken. os.rename onto an existing
    non-empty dir fails, so two runs publishing at once never share (or overwrite) a folder."""
    for n in range(1, 1000):
        folder = base / (stamp if n == 1 else f"{stamp}-{n}")
        if folder.exists():
            continue
        try:
            os.rename(tmp, folder)
            return folder
        except OSError:  # taken between the check and the rename (ENOTEMPTY / EEXIST)
            continue
    raise ShadowFTError(f"no free run folder name for {base / stamp}")


# -- promotion -----------------------------------------------------------------------------------


class PromotionRefused(ShadowFTError):
    """The new model scores worse than the promoted one by more than the allowed regression."""

    exit_code = 3


@dataclass
class Promotion:
    """The gate's decision: the suites compared with the promoted run, and whether this run replaces it."""

    ok: bool
    folder: Path
    previous: Path | None
    max_regression: float
    rows: list[dict[str, Any]] = field(default_factory=list)  # suite, promoted, new, change (points), drop

    def table(self) -> list[str]:
        return markdown_table(
            ["suite", "promoted", "new", "change (points)", ""],
            [
                [
                    r["suite"],
                    pct(r["promoted"]),
                    pct(r["new"]),
                    pct(r["change"], signed=True),
                    "**drop**" if r["drop"] else "",
                ]
                for r in self.rows
            ],
        )

    def markdown(self) -> str:
        head = (
            f"Promoted: `{self.folder}`"
            if self.ok
            else f"Not promoted: a suite dropped by more than {self.max_regression:g} points"
        )
        prev = f"compared with the promoted run `{self.previous}`" if self.previous else "first promotion of this name"
        return "\n".join([f"## Promotion gate\n\n{head} ({prev}).\n", *self.table(), ""])


def check_promotion(folder: Path, max_regression: float, model: str = PROMOTED_MODEL) -> Promotion:
    """Compare `model`'s scores in this run folder with those of `<name>/promoted` (points = % points)."""
    promoted = folder.parent / "promoted"
    new = json.loads((folder / "summary.json").read_text())
    if not promoted.exists():
        return Promotion(True, folder, None, max_regression)
    old = json.loads((promoted / "summary.json").read_text())
    rows = []
    for suite in new["suites"]:
        now = new["scores"].get(model, {}).get(suite)
        before = old.get("scores", {}).get(model, {}).get(suite)
        if now is None or before is None:
            continue  # a suite the promoted run did not evaluate: nothing to regress from
        change = round(now - before, DIGITS)
        rows.append(
            {"suite": suite, "promoted": before, "new": now, "change": change, "drop": -100 * change > max_regression}
        )
    return Promotion(not any(r["drop"] for r in rows), folder, promoted.resolve(), max_regression, rows)


def promote(decision: Promotion, run_id: str | None = None) -> None:
    """Point `<name>/promoted` at the run folder and record the promotion in `<name>/history.jsonl`."""
    base = decision.folder.parent
    _link(base / "promoted", decision.folder)
    entry = {
        "event": "promoted",
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "folder": decision.folder.name,
        "previous": decision.previous.name if decision.previous else None,
        "run_id": run_id,
        "changes": {r["suite"]: r["change"] for r in decision.rows},
    }
    with open(base / "history.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def refuse(decision: Promotion) -> PromotionRefused:
    """The error that ends the flow run Failed, with the table of drops in its message."""
    drops = ", ".join(f"{r['suite']} {pct(r['change'], signed=True)}" for r in decision.rows if r["drop"])
    return PromotionRefused(
        f"not promoted: {drops} points against the promoted run {decision.previous} "
        f"(allowed: -{decision.max_regression:g})\n" + "\n".join(decision.table()),
        hint=f"the model is kept in {decision.folder}; promote it anyway by re-running with "
        "--set output.max_regression=100, or raise output.max_regression",
    )
