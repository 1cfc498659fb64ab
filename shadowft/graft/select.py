"""Alpha chosen from data: among the candidate grafts, the lowest loss on held-out tuning data
among those that keep Instruct's skills (the retention rule).

Grafting is cheap, so choosing alpha is an evaluation problem. Each candidate is a graft with one
alpha of the grid; it is measured by its loss on the validation split (assistant tokens only, the
masking of training) and, for each retention suite, by its score against Instruct's. These
functions do the measuring and the choosing; the pipeline caches every candidate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shadowft.errors import ShadowFTError


def validation_loss(model_dir: str | Path, data_dir: str | Path, batch_size: int = 8) -> dict[str, Any]:
    """Mean cross-entropy per assistant token of `model_dir` on the validation split of a prepared
    dataset (`data_dir/validation`): the labels of training (-100 on prompt, image tokens and padding),
    batched by the training collator (a vision-language model's pixel values included)."""
    import torch

    from shadowft.data import IGNORE_INDEX, load_validation
    from shadowft.train.fit import load_model

    data = load_validation(Path(data_dir))
    if data is None or len(data) == 0:
        raise ShadowFTError(
            f"the prepared data {data_dir} has no validation split",
            hint="set data.validation_ratio (e.g. 0.1) or data.validation_sources",
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model: Any = load_model(Path(model_dir), torch.float32)
    model.to(device).eval()
    collate = _collator(model, Path(model_dir), Path(data_dir), data.column_names)
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for s in range(0, len(data), batch_size):
            batch = collate([data[i] for i in range(s, min(s + batch_size, len(data)))])
            labels = batch.pop("labels")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
            target = labels[:, 1:].to(device)
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                target.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            total += loss.item()
            tokens += int((target != IGNORE_INDEX).sum())
    del model
    if tokens == 0:
        raise ShadowFTError(f"the validation split of {data_dir} has no assistant tokens")
    return {"loss": total / tokens, "tokens": tokens, "samples": len(data)}


def _collator(model: Any, model_dir: Path, data_dir: Path, columns: list[str]) -> Any:
    """The training collator: text padded (right, so padding never changes a real token's logits);
    with images, the vision collator with the processor the data was prepared with."""
    from shadowft.train.objectives.sft import PadCollator

    if "images" in columns:
        from shadowft.train.fit import load_processing
        from shadowft.vlm_data import VisionCollator

        return VisionCollator(load_processing(data_dir / "tokenizer", model_dir))
    pad = model.config.pad_token_id if getattr(model.config, "pad_token_id", None) is not None else 0
    return PadCollator(pad)


@dataclass
class Candidate:
    """One alpha of the grid and its measurements."""

    alpha: float
    loss: float
    scores: dict[str, float | None] = field(default_factory=dict)  # retention suite -> score in [0, 1]
    drops: dict[str, float | None] = field(default_factory=dict)  # points below Instruct (negative: above)
    meets_retention: bool = True
    graft: str | None = None  # the candidate's graft artifact (stage:key)


@dataclass
class Selection:
    """The choice and everything it was made from (written as `selection.json`)."""

    chosen_alpha: float
    rule: str
    candidates: list[Candidate]
    instruct_scores: dict[str, float | None]
    retention: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_alpha(
    candidates: list[Candidate], instruct_scores: dict[str, float | None], retention: dict[str, float]
) -> Selection:
    """The argmin of validation loss among the candidates that score at most `retention[suite]`
    points below Instruct on every retention suite. Refuses when none does (or a loss is not finite)."""
    for c in candidates:
        if not math.isfinite(c.loss):
            raise ShadowFTError(f"the validation loss at alpha {c.alpha} is {c.loss}", hint="the graft diverged")
        c.drops, c.meets_retention = {}, True
        for suite, max_drop in retention.items():
            base, got = instruct_scores.get(suite), c.scores.get(suite)
            drop = None if base is None or got is None else round((base - got) * 100, 6)
            c.drops[suite] = drop
            if drop is None or drop > max_drop:
                c.meets_retention = False
    eligible = [c for c in candidates if c.meets_retention]
    if not eligible:
        detail = "; ".join(f"alpha {c.alpha}: drops {c.drops}" for c in candidates)
        raise ShadowFTError(
            f"no alpha of the grid keeps the retention rule {retention} ({detail})",
            hint="add smaller alphas to graft.alpha_grid, or allow a larger max_drop in graft.retention",
        )
    best = min(eligible, key=lambda c: (c.loss, c.alpha))
    rule = "lowest validation loss" + (
        " among candidates at most " + ", ".join(f"{d} points below Instruct on {s}" for s, d in retention.items())
        if retention
        else ""
    )
    return Selection(best.alpha, rule, candidates, dict(instruct_scores), dict(retention))


def plot_selection(selection: Selection, path: Path) -> Path:
    """Validation loss (left axis) and retention scores (right axis) against alpha; the choice marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cands = sorted(selection.candidates, key=lambda c: c.alpha)
    alphas = [c.alpha for c in cands]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(alphas, [c.loss for c in cands], "o-", color="tab:blue", label="validation loss")
    ax.axvline(selection.chosen_alpha, color="grey", linestyle=":", label=f"chosen alpha {selection.chosen_alpha}")
    ax.set_xlabel("alpha")
    ax.set_ylabel("validation loss (assistant tokens)")
    if selection.retention:
        ax2 = ax.twinx()
        colors = ["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink"]
        for i, suite in enumerate(selection.retention):
            color = colors[i % len(colors)]
            ys = [100 * (c.scores.get(suite) or 0.0) for c in cands]
            ax2.plot(alphas, ys, "s--", color=color, label=f"{suite} (%)")
            base = selection.instruct_scores.get(suite)
            if base is not None:
                floor = 100 * base - selection.retention[suite]
                ax2.axhline(floor, linestyle="-.", linewidth=0.8, color=color, label=f"{suite}: Instruct - max_drop")
        ax2.set_ylabel("retention score (%)")
        ax2.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("alpha: auto")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def selection_markdown(selection: Selection) -> str:
    """A table of the candidates for the report and the Prefect UI."""
    suites = list(selection.retention)
    head = "| alpha | validation loss | " + "".join(f"{s} | " for s in suites) + "meets retention |\n"
    head += "| ---: | ---: | " + "---: | " * len(suites) + "--- |\n"
    rows = ""
    for c in sorted(selection.candidates, key=lambda c: c.alpha):
        mark = " **(chosen)**" if c.alpha == selection.chosen_alpha else ""
        cells = ""
        for s in suites:
            score = c.scores.get(s)
            cells += "n/a | " if score is None else f"{100 * score:.1f} ({-(c.drops.get(s) or 0):+.1f}) | "
        rows += f"| {c.alpha}{mark} | {c.loss:.4f} | {cells}{'yes' if c.meets_retention else 'no'} |\n"
    return f"## Alpha chosen from data: {selection.chosen_alpha}\n\nRule: {selection.rule}.\n\n{head}{rows}"
