"""The Shadow-FT recipe as one Prefect flow (read it top to bottom).

    check the pair -> prepare data with Instruct's chat template -> tune Base (SFT or DPO)
    -> (full: extract the delta) -> graft onto Instruct -> evaluate -> report

Baselines: `instruct` (Instruct as is), `direct` (the same tuning applied to Instruct, the
conventional method) and, optionally, `tuned-base` (Base and the tuned Base, for the "carried"
share). Every stage is cached in the artifact store and in Prefect. The heavy stages (training,
evaluation) are submitted as soon as their inputs exist and run side by side when
`resources` gives more than one slot.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow
from prefect.futures import PrefectFuture

from flows.params import with_overrides
from shadowft.cluster import check_store_on_nodes
from shadowft.config import EvalConfig, GraftConfig, ResourcesConfig, RunConfig
from shadowft.stages import chosen_alpha, preflight, resolve_model, uses_vlm_family, zoo_placeholders
from shadowft.store import Artifact
from shadowft.train.methods import get_method
from tasks.alpha import select_alpha, validation_loss
from tasks.data import prepare_data
from tasks.evaluate import evaluate
from tasks.pair import check_pair
from tasks.publish import promotion_gate, run_folder
from tasks.report import report
from tasks.train import train
from tasks.weights import extract_delta, graft, graft_chosen
from tasks.zoo import embedded_family, embedded_vlm_family

# Merging a LoRA adapter into the model it was trained on: the conventional LoRA result.
MERGE = GraftConfig(alpha=1.0, scope="all")


def update_of(method: str, start: Path, tuned: Artifact, store: str) -> Artifact:
    """What is grafted: a LoRA adapter is the update itself; a full model's update is its delta."""
    return tuned if get_method(method).produces == "adapter" else extract_delta(start, tuned, store)


def as_model(method: str, start: Path, tuned: Artifact, label: str, store: str) -> Artifact:
    """The tuned model as full weights: a LoRA adapter merged into its start, a full model as is."""
    return graft(MERGE, start, tuned, label, store) if get_method(method).produces == "adapter" else tuned


def graft_with_chosen_alpha(
    graft_cfg: GraftConfig,
    eval_cfg: EvalConfig,
    instruct: Path,
    update: Artifact,
    data: Artifact,
    store: str,
    label: str = "shadow-ft",
    prefix: str = "",
    resources: ResourcesConfig | None = None,
) -> tuple[Artifact, Artifact]:
    """graft.alpha auto: a cached graft per alpha of the grid, its loss on the validation split and
    its retention scores; the choice picks one of them. `label` names the chosen graft, `prefix` the
    candidates' stages (a comparison grafts one update per seed and method: their names must differ).
    -> (chosen graft, selection)"""
    grafts, losses, kept = {}, {}, {}
    retention = eval_cfg.model_copy(update={"suites": list(graft_cfg.retention)})
    for a in graft_cfg.alpha_grid:
        grafts[str(a)] = graft(graft_cfg.candidate(a), instruct, update, f"{prefix}alpha-{a}", store)
        losses[str(a)] = validation_loss(grafts[str(a)], data, f"{prefix}alpha-{a}", store)
        if graft_cfg.retention:
            kept[str(a)] = evaluate(retention, grafts[str(a)], f"{prefix}retention-alpha-{a}", store, resources)
    # Instruct's retention scores: one model, so one name for every caller
    instruct_kept = (
        evaluate(retention, instruct, "retention-instruct", store, resources) if graft_cfg.retention else None
    )
    selection = select_alpha(graft_cfg, grafts, losses, kept, instruct_kept, store, label=prefix.rstrip("-"))
    return graft_chosen(graft_cfg, selection, grafts[chosen_alpha(selection)], label, store), selection


def model_dir(model: Path | Artifact) -> Path:
    return model.path / "model" if isinstance(model, Artifact) else model


def store_root(config: RunConfig) -> str:
    from shadowft.store import run_store

    return str(run_store(config.output.root))


def resolve_run(config: RunConfig) -> tuple[RunConfig, Path, Path, str]:
    """Checks that need no model, the embedded family for `zoo:` placeholders, local model dirs.
    -> (resolved config, base dir, instruct dir, store root)"""
    preflight(config)  # unknown eval suites, code suites without opt-in: fail before any stage
    store = store_root(config)
    if names := config.placeholders():
        vlm = embedded_vlm_family().root if uses_vlm_family(names) else None
        config = config.resolve(zoo_placeholders(embedded_family().root, vlm))
    trust = config.pair.trust_remote_code
    base = resolve_model(config.pair.base, config.pair.base_revision, role="base", trust_remote_code=trust)
    instruct = resolve_model(
        config.pair.instruct, config.pair.instruct_revision, role="instruct", trust_remote_code=trust
    )
    return config, base, instruct, store


def for_cluster(config: RunConfig):
    """The flow as it runs for `config.resources.cluster`: on a Ray cluster, heavy stages are Ray tasks
    (`tasks._cluster`); locally, the flow as defined."""
    if config.resources.cluster == "local":
        return shadow_ft
    from tasks._cluster import task_runner_for

    return shadow_ft.with_options(task_runner=task_runner_for(config.resources))


@flow(name="shadow-ft")
def shadow_ft(config: RunConfig = RunConfig(), overrides: list[str] | None = None) -> dict:
    """Shadow-FT on a Base / Instruct pair, with the conventional baselines, evaluated and reported.

    Args:
        config: The run config (examples/toy.yaml lists every key); a deployment's defaults unless given.
        overrides: `key=value` changes applied on top of `config`, as `shadowft run --set` does
            (e.g. `train.seed=7`, `eval.suites=[toy-math,toy-coding]`): they change only what they name.
    """
    started = time.time()
    config = with_overrides(config, overrides)  # the first log line says where the config came from
    config, base, instruct, store = resolve_run(config)
    if config.resources.cluster != "local":  # every Ray node must see the store: checked before any stage
        from tasks._cluster import check_flow_on_ray

        check_flow_on_ray(config.resources)
        check_store_on_nodes(store)

    pair = check_pair(config.pair, base, instruct, config.graft.scope, store)
    data = prepare_data(config.data, instruct, store, config.train.objective)

    # Heavy stages are submitted at once and run side by side, each when a slot is free (resources).
    res = config.resources
    tuned_base = train.submit(config.train, base, data, "base", store, res)
    trainings = [tuned_base]
    if "direct" in config.baselines:
        tuned_instruct = train.submit(config.train, instruct, data, "instruct", store, res)
        trainings.append(tuned_instruct)
    evals: dict[str, PrefectFuture[Artifact]] = {}
    if "instruct" in config.baselines:  # after the trainings, which are the longer path, have their slots
        evals["instruct"] = evaluate.submit(
            config.eval, instruct, "instruct", store, res, data, wait_for=trainings, return_state=False
        )

    update = update_of(config.train.method, base, tuned_base.result(), store)
    models: dict[str, Path | Artifact] = {"instruct": instruct} if "instruct" in config.baselines else {}
    if config.graft.alpha == "auto":  # alpha chosen on held-out data (a cached graft per candidate)
        shadow, selection = graft_with_chosen_alpha(
            config.graft, config.eval, instruct, update, data, store, resources=res
        )
    else:
        shadow, selection = graft(config.graft, instruct, update, "shadow-ft", store), None
    models["shadow-ft"] = shadow
    evals["shadow-ft"] = evaluate.submit(config.eval, shadow, "shadow-ft", store, res, data)
    if "direct" in config.baselines:
        models["direct"] = as_model(config.train.method, instruct, tuned_instruct.result(), "direct", store)
        evals["direct"] = evaluate.submit(config.eval, models["direct"], "direct", store, res, data)
    if "tuned-base" in config.baselines:  # Base and the shadow itself, scored alike: what tuning taught Base
        # scored alike, with the chat template the shadow was trained with where Base's tokenizer has one
        as_base = config.eval.model_copy(update={"apply_chat_template": None})
        models["base"] = base
        models["tuned-base"] = as_model(config.train.method, base, tuned_base.result(), "tuned-base", store)
        for n in ("base", "tuned-base"):
            evals[n] = evaluate.submit(as_base, models[n], n, store, res, data)

    # the report's row order
    order: list[str] = [n for n in ("instruct", "base", "tuned-base", "direct", "shadow-ft") if n in evals]
    results = {n: evals[n].result() for n in order}
    final = report(results, config.output.name or "Shadow-FT results", store, selection)
    model_dirs = {n: str(model_dir(models[n])) for n in order}

    # the run folder (runs/<name>/<time>/) and, for re-tunes, the promotion gate
    stages = {"pair": pair, "data": data, "train-base": tuned_base.result()}
    if "direct" in config.baselines:
        stages["train-instruct"] = tuned_instruct.result()
    if update.stage == "delta":
        stages["delta"] = update
    stages["graft-shadow-ft"] = shadow
    folder = run_folder(config, stages, results, final, model_dirs, started)
    if config.output.promote:
        promotion_gate(folder, config.output.max_regression)
    return {"report": str(final.path), "models": model_dirs, "folder": str(folder)}
