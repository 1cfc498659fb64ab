"""The paper's experiment as one Prefect flow: Shadow-FT against conventional tuning, over seeds.

    check the pair -> prepare data (once) -> for each seed and method:
        tune Base -> (full: delta) -> graft onto Instruct (alpha sweep, scopes; alpha auto: the
        alpha of run.graft.alpha_grid chosen on the validation split, as in the shadow-ft flow)
        tune Instruct -> (LoRA: merge)                         = conventional tuning
    -> evaluate every model (Instruct and Base once; the tuned Base as Base is) -> sigma to the start
    points -> comparison (with the share of the tuned Base's gain the graft carried)

Every stage is the pipeline's own task, so the same inputs give the same artifact keys: a model the
`shadow-ft` flow or an earlier comparison already built is reused, and a comparison extended later
(a seed, an alpha) computes only what is new.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.shadow_ft import as_model, graft_with_chosen_alpha, resolve_run, update_of
from shadowft.compare import TUNED_BASE, CompareConfig
from shadowft.stages import chosen_alpha
from shadowft.store import Artifact
from tasks.compare import comparison, distance
from tasks.data import prepare_data
from tasks.evaluate import evaluate
from tasks.pair import check_pair
from tasks.train import train
from tasks.weights import graft


@flow(name="shadow-ft-compare")
def compare(config: CompareConfig = CompareConfig()) -> dict:
    config.check()  # alpha auto without held-out data: fail before any stage
    run, base, instruct, store = resolve_run(config.run)
    res = run.resources  # where heavy stages run (slots, GPUs), as in a single run

    check_pair(run.pair, base, instruct, run.graft.scope, store)
    data = prepare_data(run.data, instruct, store, run.train.objective)

    evals: dict[str, dict[str, Artifact]] = {
        "instruct": {"-": evaluate(run.eval, instruct, "instruct", store, res, data)}
    }
    info: dict[str, dict[str, Any]] = {"instruct": {"kind": "reference", "chat_template": True}}
    # Base as plain text (a reference point); with the tuned Base rows, Base and the tuned Base are scored
    # alike with the chat template the shadow was trained with (None: where Base's tokenizer has one),
    # since the tuned Base's gain over Base is the denominator of "carried"
    tuned_bases = config.include_base and config.include_tuned_base
    as_base = run.eval.model_copy(update={"apply_chat_template": None if tuned_bases else False})
    if config.include_base:
        evals["base"] = {"-": evaluate(as_base, base, "base", store, res, data)}
        info["base"] = {"kind": "reference", "chat_template": None if tuned_bases else False}
    for method in config.methods if tuned_bases else []:
        name = f"{TUNED_BASE}-{method}"
        info[name] = {"kind": TUNED_BASE, "method": method, "lr": config.lr_for(method), "chat_template": None}
        evals[name] = {}
    distances: dict[str, dict[str, dict[str, Artifact]]] = {}
    variants = config.variants()
    for v in variants:
        info[v.name] = {
            "kind": v.kind,
            "method": v.method,
            "lr": config.lr_for(v.method),
            "baseline": v.baseline,
            **({"alpha": v.alpha, "scope": v.scope} if v.kind == "shadow" else {}),
            "trained_what": ("Instruct" if v.kind == "direct" else "Base") + (" + LoRA" if v.method == "lora" else ""),
        }
        evals[v.name], distances[v.name] = {}, {}

    for seed in config.seeds:
        for method in config.methods:
            tc = config.train_for(method, seed)
            tag = f"{method}-s{seed}"
            # Shadow-FT: tune Base; the update is the delta (full) or the adapter (LoRA)
            tuned_base = train(tc, base, data, f"base-{tag}", store, res)
            update = update_of(method, base, tuned_base, store)
            # conventional: tune Instruct (a LoRA adapter is merged into it)
            tuned_inst = train(tc, instruct, data, f"instruct-{tag}", store, res)
            direct = as_model(method, instruct, tuned_inst, f"direct-{tag}", store)
            # the trained models as full weights, to measure how far each moved from its start
            moved_base = as_model(method, base, tuned_base, f"base-merged-{tag}", store)
            if tuned_bases:
                evals[f"{TUNED_BASE}-{method}"][str(seed)] = evaluate(
                    as_base, moved_base, f"{TUNED_BASE}-{tag}", store, res, data
                )

            for v in (v for v in variants if v.method == method):
                label = f"{v.name}-s{seed}".replace(" ", "-").replace("=", "")
                if v.kind == "direct":
                    model, trained = direct, (direct, instruct)
                elif v.alpha == "auto":  # the candidates' stages are named after the variant and seed
                    model, selection = graft_with_chosen_alpha(
                        v.graft, run.eval, instruct, update, data, store, label, prefix=f"{label}-", resources=res
                    )
                    info[v.name].setdefault("chosen_alpha", {})[str(seed)] = float(chosen_alpha(selection))
                    trained = (moved_base, base)
                else:
                    model, trained = graft(v.graft, instruct, update, label, store), (moved_base, base)
                evals[v.name][str(seed)] = evaluate(run.eval, model, label, store, res, data)
                if config.distances:
                    distances[v.name][str(seed)] = {
                        "trained": distance(*trained, f"trained-{label}", store),
                        "final": distance(model, instruct, f"final-{label}", store),
                    }

    result = comparison(evals, distances, info, config.title, store)
    return {"comparison": str(result.path), "models": list(evals)}
