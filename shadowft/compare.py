"""The paper's experiment at small scale: Shadow-FT against conventional tuning, over seeds.

For one pair and one dataset, a comparison scores

- ``instruct`` (as is) and ``base`` (without chat template, for reference);
- conventional tuning of Instruct, ``direct-lora`` and ``direct-full``;
- Shadow-FT, ``shadow-lora`` and ``shadow-full`` (alpha 1, the run's graft scope), and optionally an
  alpha sweep (``shadow-lora a=0.5``) and other graft scopes (``shadow-full scope=all``);

each tuned model once per seed. This module holds the typed config, the list of variants, the
aggregation (mean and sample standard deviation over seeds, the change against Instruct, the paired
shadow-minus-direct difference), the markdown table, the chart and the weight-side view (sigma of
each tuned model to its start point). No Prefect here: the flow is `flows/compare.py`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shadowft.config import (
    GraftConfig,
    Method,
    RunConfig,
    TrainConfig,
    load_model,
)
from shadowft.errors import ShadowFTError
from shadowft.report import rounded
from shadowft.tables import chance_cells, markdown_row, markdown_table, pct, with_change

REFERENCE = "instruct"
#: A difference counts as larger than the seed spread when |mean| > SIGNIFICANCE x standard error.
SIGNIFICANCE = 2.0


class CompareConfig(BaseModel):
    """A comparison: one run config (pair, data, training, eval) tuned with every method, per seed."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    run: RunConfig = Field(
        default_factory=RunConfig,
        description="The pair, data, training, graft and evaluation settings shared by every model "
        "(train.method, train.lr, train.seed, graft.alpha are set per variant; baselines are ignored).",
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2], min_length=1, description="Training seeds (train.seed)."
    )
    methods: list[Method] = Field(
        default_factory=lambda: list[Method](["lora", "full"]),
        min_length=1,
        description="Tuning methods compared: lora, full.",
    )
    lr: dict[Method, float] = Field(
        default_factory=dict,
        description="Peak learning rate per method; a method not listed uses run.train.lr if run.train.method is "
        "that method, else its default for run.train.objective (SFT: LoRA 2e-4, full 1e-5).",
    )
    alphas: list[float | Literal["auto"]] = Field(
        default_factory=lambda: list[float | Literal["auto"]]([1.0]),
        min_length=1,
        description="Graft alphas of Shadow-FT (1.0 is the published one); `auto`: per seed, the alpha of "
        "run.graft.alpha_grid chosen on the validation split (as the shadow-ft flow's graft.alpha auto).",
    )
    scopes: list[str] = Field(
        default_factory=lambda: ["projections"],
        min_length=1,
        description="Graft scopes of Shadow-FT: projections, all, or a regex. The first is the main one; the "
        "others are evaluated at alpha 1.",
    )
    include_base: bool = Field(
        default=True,
        description="Also evaluate Base for reference (as plain text; with include_tuned_base, with the chat "
        "template as the tuned Base is).",
    )
    include_tuned_base: bool = Field(
        default=True,
        description="Also evaluate the tuned Base itself (the shadow: LoRA merged into Base, or the fully tuned "
        "Base), per seed and method, and Base alike (with the chat template the shadow was trained with, where "
        "Base's tokenizer has one), and report per suite the share of its gain over Base that the graft carried to Instruct. Needs include_base (the gain is over Base).",
    )
    distances: bool = Field(default=True, description="Compute sigma of each tuned model to its start point.")
    title: str = Field(default="Shadow-FT vs conventional tuning", description="Title of the table and chart.")

    @field_validator("seeds", "methods", "alphas", "scopes")
    @classmethod
    def _unique(cls, v: list) -> list:
        return list(dict.fromkeys(v))

    @field_validator("alphas")
    @classmethod
    def _alpha_range(cls, v: list[float | str]) -> list[float | str]:
        for a in v:
            GraftConfig(alpha=a)
        return v

    def check(self) -> None:
        """Checks of the comparison as a whole, before any stage runs: `auto` needs held-out data and
        the SFT loss, which a comparison's run config (its graft.alpha a number) is not checked for."""
        if "auto" not in self.alphas:
            return
        if not self.run.data.has_validation:
            raise ShadowFTError(
                "alphas has auto, which chooses each seed's alpha by the loss on a validation split, but "
                "run.data has none (validation_ratio 0, no validation_sources)",
                hint="set run.data.validation_ratio (e.g. 0.1) or run.data.validation_sources, or remove auto "
                "from alphas",
            )
        from shadowft.train.objectives import get_objective

        if not get_objective(self.run.train.objective).selects_alpha:
            raise ShadowFTError(
                f"alphas has auto, which measures the SFT loss, but run.train.objective is {self.run.train.objective}",
                hint="use auto with run.train.objective sft, or list the alphas to compare",
            )

    @field_validator("scopes")
    @classmethod
    def _scopes_valid(cls, v: list[str]) -> list[str]:
        for s in v:
            GraftConfig(scope=s)
        return v

    # -- the models of the comparison ------------------------------------------------------------
    def lr_for(self, method: str) -> float:
        if method in self.lr:
            return self.lr[method]
        if method == self.run.train.method and self.run.train.lr is not None:
            return self.run.train.lr
        return TrainConfig(method=method, objective=self.run.train.objective).effective_lr

    def train_for(self, method: str, seed: int) -> TrainConfig:
        """The training config of `method` at `seed` (the run's settings otherwise)."""
        data = self.run.train.model_dump()
        data.update(method=method, lr=self.lr_for(method), seed=seed)
        return TrainConfig.model_validate(data)

    def variants(self) -> list[Variant]:
        """Tuned models, in table order: per method the direct baseline, then Shadow-FT (alpha 1 or the
        first alpha, first scope), then the other alphas, then the other scopes."""
        main_alpha = 1.0 if 1.0 in self.alphas else self.alphas[0]
        # the run's graft method and its settings, and (for auto) alpha grid apply to every Shadow-FT variant
        g = self.run.graft
        how: dict[str, Any] = {
            "graft_method": g.effective_method,
            "method_settings": g.method_settings,
            "alpha_grid": list(g.alpha_grid),
            "retention": dict(g.retention),
        }
        out: list[Variant] = []
        for m in self.methods:
            out.append(Variant(name=f"direct-{m}", method=m, kind="direct"))
            out.append(
                Variant(name=f"shadow-{m}", method=m, kind="shadow", alpha=main_alpha, scope=self.scopes[0], **how)
            )
            out += [
                Variant(
                    name=f"shadow-{m} a={_alpha_text(a)}", method=m, kind="shadow", alpha=a, scope=self.scopes[0], **how
                )
                for a in self.alphas
                if a != main_alpha
            ]
            out += [
                Variant(name=f"shadow-{m} scope={s}", method=m, kind="shadow", alpha=main_alpha, scope=s, **how)
                for s in self.scopes[1:]
            ]
        return out


def _alpha_text(a: float | str) -> str:
    return a if isinstance(a, str) else f"{a:g}"


class Variant(BaseModel):
    """One tuned model of the comparison (evaluated once per seed)."""

    name: str
    method: Method
    kind: Literal["direct", "shadow"]
    alpha: float | Literal["auto"] = 1.0
    scope: str = "projections"
    graft_method: str | None = None
    method_settings: dict[str, Any] = {}  # the graft method's own (its graft.<method> sub-section)
    alpha_grid: list[float] = Field(default_factory=lambda: GraftConfig().alpha_grid)  # for alpha auto
    retention: dict[str, float] = {}

    @property
    def graft(self) -> GraftConfig:
        return GraftConfig(
            alpha=self.alpha,
            scope=self.scope,
            method=self.graft_method,
            **({self.graft_method: self.method_settings} if self.graft_method and self.method_settings else {}),
            alpha_grid=self.alpha_grid,
            retention=self.retention,
        )

    @property
    def baseline(self) -> str:
        """The conventional model this one is compared with (same method)."""
        return f"direct-{self.method}"


def load_compare_config(path: Path | str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> CompareConfig:
    """Read a comparison YAML (`run:` holds a run config), apply ``key.sub=value`` overrides (e.g.
    ``seeds=[0]``, ``run.eval.limit=20``) and validate; problems raise `ShadowFTError`."""
    return load_model(CompareConfig, path, overrides, what="comparison config", example="examples/compare-toy.yaml")


# -- aggregation -----------------------------------------------------------------------------------


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of the values present; std is None for fewer than two."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def _with_mean(scores: dict[str, float | None], suites: list[str]) -> dict[str, float | None]:
    row = {s: scores.get(s) for s in suites}
    vals = [v for v in row.values() if v is not None]
    row["mean"] = sum(vals) / len(vals) if vals else None
    return row


#: A suite of `results.json` (as data) -> its score; None when it has none.
Scorer = Callable[[dict[str, Any]], float | None]
STRICT = "strict"
STRICT_TITLE = "Strict scores (the reply as it is: a change of answer style counts as wrong)"


def primary_score(suite: dict[str, Any]) -> float | None:
    """The suite's own score (its tasks' primary metrics)."""
    return suite["score"]


def strict_score(suite: dict[str, Any]) -> float | None:
    """The suite's score under lm-eval's `strict` filter (the stripped reply as is), if it has one."""
    from shadowft.evaluate.results import filtered_score  # not at import: the package loads the runner

    return filtered_score(suite, STRICT)


def score_stats(
    results: dict[str, dict[str, dict[str, Any]]],
    suites: list[str],
    info: dict[str, dict[str, Any]],
    score: Scorer = primary_score,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per model (seeds, per_seed, mean, std, change vs Instruct) and per Shadow-FT model (the paired
    difference to its baseline) with each suite scored by `score`. -> (models, paired)"""
    cols = [*suites, "mean"]
    models: dict[str, Any] = {}
    for name, per_seed in results.items():
        rows = {seed: _with_mean({s: score(v) for s, v in r["suites"].items()}, suites) for seed, r in per_seed.items()}
        stats = {c: mean_std([row[c] for row in rows.values()]) for c in cols}
        models[name] = {
            "seeds": list(rows),
            "per_seed": rows,
            "mean": {c: stats[c][0] for c in cols},
            "std": {c: stats[c][1] for c in cols},
        }
    ref = models.get(REFERENCE, {}).get("mean")
    for m in models.values():
        m["change"] = {
            c: (m["mean"][c] - ref[c]) if ref and m["mean"][c] is not None and ref.get(c) is not None else None
            for c in cols
        }

    paired: dict[str, Any] = {}
    for name, m in models.items():
        base_name = info.get(name, {}).get("baseline")
        if info.get(name, {}).get("kind") != "shadow" or base_name not in models:
            continue
        other = models[base_name]["per_seed"]
        common = [s for s in m["per_seed"] if s in other]
        if not common:
            continue
        entry: dict[str, Any] = {"vs": base_name, "seeds": common, "diff": {}, "std": {}, "se": {}, "beyond_spread": {}}
        for c in cols:
            diffs = [
                m["per_seed"][s][c] - other[s][c]
                for s in common
                if m["per_seed"][s][c] is not None and other[s][c] is not None
            ]
            mu, sd = mean_std(diffs)
            se = sd / math.sqrt(len(diffs)) if sd is not None else None
            entry["diff"][c], entry["std"][c], entry["se"][c] = mu, sd, se
            entry["beyond_spread"][c] = (
                None if mu is None or se is None else (abs(mu) > SIGNIFICANCE * se if se > 0 else mu != 0)
            )
        paired[name] = entry
    return models, paired


TUNED_BASE = "tuned-base"  # the kind (and name prefix) of the tuned Base rows


def carried_share(
    graft: dict[str, float | None],
    tuned_base: dict[str, float | None],
    instruct: float | None,
    base: float | None,
    items: int | None = None,
) -> dict[str, Any]:
    """How much of what tuning taught Base the graft brought to Instruct, on one suite:
    ``(graft - Instruct) / (tuned Base - Base)`` per seed (`graft`, `tuned_base`: seed -> score), then
    mean ± std over seeds. 1: the graft added to Instruct all that tuning added to Base; 0: nothing.

    The share is only meaningful where the tuned Base gained beyond noise, so it is shown (`shown`, and
    `mean`/`std` set) only where the mean gain is beyond its standard error: std/sqrt(n) over n seeds,
    or with one seed the binomial one of the difference of the two scores, sqrt((b (1 - b) + t (1 - t))
    / items) (not Base's alone: a Base at 0 % has none, and any gain would pass). Otherwise `why` says
    why not. Seeds whose gain is exactly 0 have no share (None)."""
    pairs = {s: (g, t) for s in graft if (g := graft[s]) is not None and (t := tuned_base.get(s)) is not None}
    out: dict[str, Any] = {"per_seed": {}, "mean": None, "std": None, "shown": False, "why": None}
    if instruct is None or base is None or not pairs:
        out["gain"] = {"mean": None, "std": None, "se": None, "n": 0}
        out["why"] = "no scores of " + ("Instruct and Base" if instruct is None or base is None else "common seeds")
        return out
    gains = {s: t - base for s, (_, t) in pairs.items()}
    out["per_seed"] = {s: ((g - instruct) / gains[s] if gains[s] else None) for s, (g, _) in pairs.items()}
    g_mean, g_std = mean_std(list(gains.values()))
    n = len(gains)
    if n > 1:
        se: float | None = g_std / math.sqrt(n) if g_std is not None else None
        what = f"its standard error over {n} seeds"
    elif items:
        tuned = next(iter(pairs.values()))[1]
        se = math.sqrt((base * (1 - base) + tuned * (1 - tuned)) / items)
        what = f"the binomial standard error of the two scores' difference on {items} items (one seed)"
    else:
        se, what = None, "no standard error (one seed, number of items unknown)"
    out["gain"] = {"mean": g_mean, "std": g_std, "se": se, "n": n}
    assert g_mean is not None  # n >= 1
    if se is None or abs(g_mean) <= se:
        out["why"] = f"the tuned Base's gain over Base ({100 * g_mean:+.1f} points) is not beyond {what}" + (
            f" ({100 * se:.1f})" if se is not None else ""
        )
        return out
    out["mean"], out["std"] = mean_std(list(out["per_seed"].values()))
    out["shown"] = out["mean"] is not None
    if not out["shown"]:
        out["why"] = "no seed with a nonzero gain"
    return out


def carried(models: dict[str, Any], suites: list[str], items: dict[str, int | None]) -> dict[str, dict[str, Any]]:
    """Per Shadow-FT model (with a `tuned-base-<method>` row of its method, and Base and Instruct rows)
    and suite, its `carried_share`. `models`: the summary's models (kind, method, per_seed)."""
    if "base" not in models or REFERENCE not in models:
        return {}
    one: dict[str, dict[str, Any]] = {
        name: next(iter(models[name]["per_seed"].values()), {}) for name in ("base", REFERENCE)
    }
    out: dict[str, dict[str, Any]] = {}
    for name, m in models.items():
        tuned = f"{TUNED_BASE}-{m.get('method')}"
        if m.get("kind") != "shadow" or models.get(tuned, {}).get("kind") != TUNED_BASE:
            continue
        out[name] = {"vs": tuned}
        for s in suites:
            out[name][s] = carried_share(
                {seed: row.get(s) for seed, row in m["per_seed"].items()},
                {seed: row.get(s) for seed, row in models[tuned]["per_seed"].items()},
                one[REFERENCE].get(s),
                one["base"].get(s),
                items.get(s),
            )
    return out


def aggregate(
    results: dict[str, dict[str, dict[str, Any]]],
    info: dict[str, dict[str, Any]] | None = None,
    distances: dict[str, dict[str, dict[str, float]]] | None = None,
    title: str = "Shadow-FT vs conventional tuning",
) -> dict[str, Any]:
    """The comparison summary.

    - `results`: model -> seed (as text; "-" for untrained models) -> an evaluate `results.json` dict;
    - `info`: model -> {kind, method, alpha, scope, chat_template, baseline} (shown in the JSON);
    - `distances`: model -> seed -> {"trained": sigma to its start, "final": sigma to Instruct}.

    Per model and suite: per-seed scores (the suite mean is taken per seed, then over seeds), mean and
    sample std over seeds, the change of the mean against Instruct. Per Shadow-FT model: the paired
    per-seed difference to its conventional baseline, with mean, std, standard error and whether
    |mean| > 2 standard errors. The same statistics on the `strict` filter's scores go to `strict`
    when any result has them: a tuning that only changes how answers are phrased shows there.
    """
    info = info or {}
    suites: list[str] = []
    chance: dict[str, float | None] = {}
    items: dict[str, int | None] = {}
    for per_seed in results.values():
        for r in per_seed.values():
            for s, v in r["suites"].items():
                if s not in suites:
                    suites.append(s)
                    chance[s], items[s] = v.get("chance"), v.get("n")
    stats, paired = score_stats(results, suites, info, primary_score)
    models = {name: {**info.get(name, {}), **m} for name, m in stats.items()}

    dist: dict[str, Any] = {}
    for name, per_seed in (distances or {}).items():
        d: dict[str, Any] = {}
        for k in ("trained", "final"):
            vals = [v[k] for v in per_seed.values() if v.get(k) is not None]
            if vals:
                mu, sd = mean_std(vals)
                d[k] = {"mean": mu, "std": sd, "per_seed": {s: v.get(k) for s, v in per_seed.items()}}
        d["trained_what"] = info.get(name, {}).get("trained_what")
        dist[name] = d

    summary: dict[str, Any] = {
        "title": title,
        "suites": suites,
        "chance": chance,
        "items": items,
        "reference": REFERENCE,
        "significance": f"|mean paired difference| > {SIGNIFICANCE:g} x standard error over seeds",
        "models": models,
        "paired": paired,
        "distances": dist,
    }
    if share := carried(models, suites, items):
        summary["carried"] = share
    has_strict = any(
        strict_score(v) is not None for per in results.values() for r in per.values() for v in r["suites"].values()
    )
    if has_strict:
        strict_models, strict_paired = score_stats(results, suites, info, strict_score)
        summary[STRICT] = {"filter": STRICT, "models": strict_models, "paired": strict_paired}
    return summary


def rounded_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary as written: scores (fractions) to `DIGITS` decimals, which hides float noise such as
    0.20000000000000004; sigma to 6 significant digits instead, as a small sigma (1e-6 for a
    short LoRA run) would round to 0."""

    def sig(x: Any) -> Any:
        if isinstance(x, float):
            return float(f"{x:.6g}")
        if isinstance(x, dict):
            return {k: sig(v) for k, v in x.items()}
        return x

    return {**rounded({k: v for k, v in summary.items() if k != "distances"}), "distances": sig(summary["distances"])}


# -- presentation ----------------------------------------------------------------------------------


def cell(model: dict[str, Any], col: str, reference: bool = False) -> str:
    """``mean ± std (change vs Instruct)`` in %, e.g. ``31.0 ± 2.1 (+4.0)``."""
    text = pct(model["mean"].get(col))
    if model["std"].get(col) is not None:
        text += f" ± {100 * model['std'][col]:.1f}"
    return with_change(text, None if reference else model["change"].get(col))


def table_rows(summary: dict[str, Any], scores: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """Rows for a table artifact: model, seeds, then mean ± std (change vs Instruct) per suite and the mean.
    `scores`: the section holding the models' statistics (default the summary itself; `summary["strict"]`)."""
    rows = []
    for name, m in (scores or summary)["models"].items():
        trained = summary["models"].get(name, {}).get("kind") in ("direct", "shadow", TUNED_BASE)
        row = {"model": name, "seeds": str(len(m["seeds"])) if trained else "-"}
        for c in [*summary["suites"], "mean"]:
            row[c] = cell(m, c, reference=name == summary["reference"])
        rows.append(row)
    return rows


def notes(summary: dict[str, Any]) -> list[str]:
    """Footnotes of the score table: why a reference row reads as it does (a Base row near 0 everywhere
    looked like a bug)."""
    out = [
        f"{name}: scored without a chat template (a Base model is prompted as plain text), so on suites that "
        "read the answer from a chat reply it rarely answers in the expected form: scores near 0 are expected. "
        "A reference point, not a baseline."
        for name, m in summary["models"].items()
        if m.get("kind") == "reference" and m.get("chat_template") is False
    ]
    tuned = [name for name, m in summary["models"].items() if m.get("kind") == TUNED_BASE]
    if tuned:
        out.append(
            f"{', '.join(tuned)}: the tuned Base itself (the shadow, before grafting), scored as Base is (both with "
            "the chat template the shadow was trained with, where Base's tokenizer has one): its gain over Base is "
            "what tuning taught, the denominator of the carried share below."
        )
    return out


def carried_cell(c: dict[str, Any]) -> str:
    """One `carried_share` as text, in %: ``50 ± 12``, or ``—`` where the gain is within the noise."""
    if not c["shown"]:
        return "—"
    return f"{100 * c['mean']:.0f}" + (f" ± {100 * c['std']:.0f}" if c["std"] is not None else "")


def carried_text(per_suite: dict[str, Any]) -> str:
    """A line for the terminal: ``toy-math 50 ± 12 %, toy-domain —`` (suite -> `carried_share`)."""
    return ", ".join(f"{s} {carried_cell(c)}" + (" %" if c["shown"] else "") for s, c in per_suite.items())


def carried_markdown(summary: dict[str, Any]) -> list[str]:
    """The carried table: per Shadow-FT model and suite, the share of the tuned Base's gain over Base that
    the graft added to Instruct (mean ± std over seeds, in %), "—" where that gain is within its noise."""
    share = summary.get("carried")
    if not share:
        return []
    suites = summary["suites"]
    rows, why = [], []
    for name, per in share.items():
        cells = []
        for s in suites:
            cells.append(carried_cell(per[s]))
            if not per[s]["shown"]:
                why.append(f"{name}, {s}: {per[s]['why']}.")
        rows.append([name, per["vs"], *cells])
    lines = [
        "## Carried: how much of what tuning taught Base the graft brought to Instruct",
        "",
        "Per seed, (Shadow-FT - Instruct) / (tuned Base - Base) per suite, in %; mean ± std over seeds. "
        "100: the graft added to Instruct as much as tuning added to Base; 0: none of it; negative: the graft "
        "lost ground. Shown only where the tuned Base's gain over Base is beyond its standard error (over "
        "seeds; with one seed, the binomial one of the two scores' difference).",
        "",
        *markdown_table(["model", "tuned Base", *suites], rows, text_columns=2),
        "",
    ]
    if why:
        lines += ["Not shown (—):", "", *(f"- {w}" for w in why), ""]
    return lines


def _score_tables(summary: dict[str, Any], scores: dict[str, Any], heading: str) -> list[str]:
    """The model table and the paired-difference table of one way of scoring (`scores`)."""
    cols = [*summary["suites"], "mean"]
    lines = [
        *markdown_table(
            ["model", "seeds", *cols],
            [[row[c] for c in ["model", "seeds", *cols]] for row in table_rows(summary, scores)],
        ),
        markdown_row(["*chance*", "", *chance_cells(summary, summary["suites"]), ""]),
        markdown_row(["*items*", "", *(str(summary["items"].get(s) or "-") for s in summary["suites"]), ""]),
        "",
    ]
    if scores["paired"]:
        lines += [
            f"{heading} Shadow-FT minus conventional tuning (same method, paired by seed)",
            "",
            f"Mean ± std of the per-seed difference in points; **bold**: {summary['significance']}.",
            "",
        ]
        rows = []
        for name, p in scores["paired"].items():
            cells = []
            for c in cols:
                t = pct(p["diff"][c], signed=True)
                if p["std"][c] is not None:
                    t += f" ± {100 * p['std'][c]:.1f}"
                cells.append(f"**{t}**" if p["beyond_spread"][c] else t)
            rows.append([name, p["vs"], *cells])
        lines += [*markdown_table(["model", "vs", *cols], rows, text_columns=2), ""]
    return lines


def to_markdown(summary: dict[str, Any]) -> str:
    plain = summary["models"].get("base", {}).get("chat_template") is False
    lines = [
        f"# {summary['title']}",
        "",
        (
            "Scores in %: mean ± standard deviation over seeds (change of the mean against Instruct). "
            "Instruct and Base are not trained: one evaluation, no spread. "
            + (
                "Base is evaluated without chat template."
                if plain
                else "Base is evaluated as the tuned Base is (with the chat template where its tokenizer has one)."
            )
        ),
        "",
        *_score_tables(summary, summary, "##"),
        *(f"*{note}*\n" for note in notes(summary)),
        *carried_markdown(summary),
    ]
    chosen = {n: m["chosen_alpha"] for n, m in summary["models"].items() if m.get("chosen_alpha")}
    if chosen:
        lines += [
            "## Alpha chosen from data (graft.alpha auto)",
            "",
            "Per seed, the alpha of `run.graft.alpha_grid` with the lowest loss on the validation split "
            "(among those that keep the retention suites, if any).",
            "",
            *markdown_table(
                ["model", "chosen alpha per seed"],
                [[n, ", ".join(f"seed {s}: {a:g}" for s, a in per.items())] for n, per in chosen.items()],
                text_columns=2,
            ),
            "",
        ]
    if STRICT in summary:
        lines += [
            f"## {STRICT_TITLE}",
            "",
            "The same models scored by lm-eval's `strict` filter, which takes the stripped reply as the answer "
            "(the scores above extract it from replies such as `The answer is 42.`).",
            "",
            *_score_tables(summary, summary[STRICT], "###"),
        ]
    if summary["distances"]:
        lines += [
            "## How far each method moved the weights (sigma, mean over layer tensors)",
            "",
            (
                "sigma(A, B) = sum|A - B| / (sum|A| + sum|B|). *trained*: the model that was trained, against its "
                "start point (a LoRA adapter merged into it); *final*: the evaluated model against Instruct."
            ),
            "",
            "| model | trained | sigma(trained, start) | sigma(final, Instruct) |",
            "| --- | --- | ---: | ---: |",
        ]
        for name, d in summary["distances"].items():

            def f(k: str, d: dict[str, Any] = d) -> str:
                if k not in d:
                    return "-"
                s = f"{d[k]['mean']:.5f}"
                return s + (f" ± {d[k]['std']:.5f}" if d[k]["std"] is not None else "")

            lines.append(f"| {name} | {d.get('trained_what') or '-'} | {f('trained')} | {f('final')} |")
        lines.append("")
    return "\n".join(lines)


def draw_chart(summary: dict[str, Any], path: Path) -> Path:
    """Grouped bars (mean over seeds, std as error bars, Shadow-FT hatched) per suite and the mean."""
    from shadowft.report import bar_chart

    cols = [*summary["suites"], "mean"]
    models = summary["models"]
    return bar_chart(
        path,
        cols,
        {n: [m["mean"].get(c) or 0.0 for c in cols] for n, m in models.items()},
        summary["chance"],
        f"{summary['title']} (mean ± std over seeds; dashed: chance)",
        errors={n: [m["std"].get(c) or 0.0 for c in cols] for n, m in models.items()},
        hatched={n for n, m in models.items() if m.get("kind") == "shadow"},
    )


def write_comparison(summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """`summary.json`, `table.md` and `chart.png` in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"summary": out_dir / "summary.json", "table": out_dir / "table.md", "chart": out_dir / "chart.png"}
    summary = rounded_summary(summary)  # once: the JSON and the table show the same numbers
    files["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    files["table"].write_text(to_markdown(summary))
    draw_chart(summary, files["chart"])
    return files


# -- the comparison as a stored stage ---------------------------------------------------------------


def comparison_spec(
    evals: dict[str, dict[str, Any]],
    distances: dict[str, dict[str, dict[str, Any]]] | None = None,
    info: dict[str, dict[str, Any]] | None = None,
    title: str = "Shadow-FT vs conventional tuning",
):
    """The stored comparison (`summary.json`, `table.md`, `chart.png`), keyed by the evaluation and
    distance artifacts it aggregates. `evals`: model -> seed -> eval `Artifact`; `distances`: model ->
    seed -> {"trained" | "final": distance `Artifact`}."""
    from shadowft.stages import StageSpec, artifact_ref

    def produce(tmp: Path) -> dict:
        results = {
            m: {s: json.loads((a.path / "results.json").read_text()) for s, a in per.items()}
            for m, per in evals.items()
        }
        sig = {
            m: {
                s: {k: json.loads((a.path / "sigma.json").read_text())["mean"] for k, a in d.items()}
                for s, d in per.items()
            }
            for m, per in (distances or {}).items()
        }
        summary = aggregate(results, info, sig, title)
        write_comparison(summary, tmp)
        return {"models": list(summary["models"])}

    inputs = {f"eval:{m}:{s}": artifact_ref(a) for m, per in evals.items() for s, a in per.items()}
    inputs |= {
        f"distance:{m}:{s}:{k}": artifact_ref(a)
        for m, per in (distances or {}).items()
        for s, d in per.items()
        for k, a in d.items()
    }
    return StageSpec("compare", {"title": title, "info": info or {}, "models": list(evals)}, inputs, produce)
