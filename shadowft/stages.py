"""The pipeline's stages as plain functions over the artifact store (no orchestrator needed).

Each stage has a *spec* function that names its output before any work: the stage, the part of
the config that affects it, and the identities of its inputs (artifact keys for upstream stages,
fingerprints for user inputs). The spec's key addresses the artifact; `run` builds it once.
Prefect tasks (`tasks/`) call these same functions, and key Prefect's cache on `cache_token`.

Artifact layout (under the store's `artifacts/<stage>/<key>/`):

    pair    pair.json                      data    data/ (tokenized dataset + stats.json)
    train   model/ (adapter or full model)  delta   delta/ (safetensors + provenance)
    graft   model/ (HF model dir)           eval    results.json + samples_*.jsonl
    report  summary.json, report.md, chart.png
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadowft.concurrency import import_for_stage
from shadowft.config import ZOO_PREFIX, DataConfig, EvalConfig, GraftConfig, PairConfig, RunConfig, TrainConfig
from shadowft.errors import ShadowFTError
from shadowft.fingerprint import fingerprint_path
from shadowft.store import Artifact, ArtifactStore, artifact_key

# Bump a stage's version when its code changes what it produces: its artifacts are rebuilt.
STAGE_VERSIONS = {
    "pair": "2",
    "data": "1",
    "train": "1",
    "delta": "2",  # 2: records the Base's structure (grafting checks Instruct against it)
    "graft": "2",  # 2: records the pair check it made (pair_check)
    "val_loss": "1",
    "alpha": "1",
    "eval": "1",
    "report": "2",
    "distance": "1",
    "compare": "1",
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "processor_config.json",  # a vision-language model's processor: how images become tokens
    "preprocessor_config.json",
)

Progress = Callable[[dict[str, Any]], None]


@dataclass
class StageSpec:
    """What a stage will produce: enough to compute its key without doing the work."""

    stage: str
    config: Any
    inputs: dict[str, str]
    produce: Callable[[Path], dict | None]
    #: set on a worker node of a multi-node training (train.node_rank > 0): runs this node's ranks
    #: instead of building; node 0 builds and publishes the artifact in the shared store
    lend: Callable[[], None] | None = None

    @property
    def key(self) -> str:
        return artifact_key(self.stage, STAGE_VERSIONS[self.stage], self.config, self.inputs)


#: how long a worker node waits for node 0 to publish after their joint training ended
LEND_PUBLISH_TIMEOUT_S = 600.0


def run(spec: StageSpec, store: ArtifactStore) -> tuple[Artifact, bool]:
    """Build the spec's artifact unless it exists. -> (artifact, built now)

    A worker node of a multi-node training (`spec.lend`) does not build: it runs its ranks (without
    the key's lock, which node 0 holds while they train together), then returns the artifact node 0
    published in the shared store.
    """

    def produce(tmp: Path) -> dict | None:
        import_for_stage(spec.stage)  # first use of transformers & co., one thread at a time
        return spec.produce(tmp)

    if spec.lend is None:
        return store.build(spec.stage, spec.key, produce, config=spec.config, inputs=spec.inputs)
    found = store.get(spec.stage, spec.key)
    if found is not None:
        return found, False
    import_for_stage(spec.stage)
    spec.lend()
    deadline = time.monotonic() + LEND_PUBLISH_TIMEOUT_S
    while (found := store.get(spec.stage, spec.key)) is None:
        if time.monotonic() > deadline:
            raise ShadowFTError(
                f"this node's ranks finished, but node 0 published no {spec.stage} artifact {spec.key} within "
                f"{LEND_PUBLISH_TIMEOUT_S:.0f} s",
                hint="SHADOWFT_HOME must be storage that every node sees; check node 0's run",
            )
        time.sleep(1.0)
    return found, False


# -- identities of inputs ------------------------------------------------------------------------
def model_ref(path: str | Path) -> str:
    return "fp:" + fingerprint_path(path)


def tokenizer_ref(model_dir: str | Path) -> str:
    """Fingerprint of the tokenizer and chat template only: new weights do not invalidate data prep."""
    import hashlib

    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        f = Path(model_dir) / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    return "tok:" + h.hexdigest()


def source_ref(source: str, images: bool = False) -> str:
    """A data source's part of the data key: the content of every local file it reads (a
    `dataset_info.json#NAME` source: the index and the data it names; with `images`, for a
    vision-language pair, the image files its rows name), else its name (a hub id)."""
    from shadowft.vlm_data import image_files

    pictures = image_files(source) if images else []
    media = ("+img:" + "+".join(fingerprint_path(f) for f in pictures)) if pictures else ""
    p = Path(source)
    if p.exists():
        return "fp:" + fingerprint_path(p) + media
    from shadowft.formats import source_files

    files = source_files(source)
    if not files:
        return f"name:{source}"
    return "fp:" + "+".join(fingerprint_path(f) for f in files) + media + "#" + source.rpartition("#")[2]


def artifact_ref(a: Artifact) -> str:
    return f"{a.stage}:{a.key}"


def resolve_model(ref: str, revision: str | None = None, role: str = "model", trust_remote_code: bool = False) -> Path:
    """A local model dir for `ref`: the path itself, or a snapshot of a hub id (safetensors only; the
    repo's Python files only with `trust_remote_code`, and the pair check refuses them without it)."""
    p = Path(ref).expanduser()
    if p.exists():
        return p.absolute()
    if ref.startswith((".", "/", "~")) or ref.count("/") != 1:
        raise ShadowFTError(
            f"{role} model {ref!r} is not a directory",
            hint="give a local model dir or a hub id like Qwen/Qwen3-4B-Base",
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(
            snapshot_download(
                ref,
                revision=revision,
                allow_patterns=[
                    "*.safetensors",
                    "*.json",
                    "*.jinja",
                    "*.txt",
                    "*.model",
                    "*.tiktoken",
                    *(["*.py"] if trust_remote_code else []),
                ],
            )
        )
    except Exception as exc:  # offline, gated, missing: say which and how to fix
        raise ShadowFTError(
            f"{role} model {ref!r} is not a local directory and could not be fetched from the hub ({type(exc).__name__}: {exc})",
            hint="download it first (huggingface-cli download), pass its local path, or set HF_TOKEN for gated models",
        ) from None


def preflight(config: RunConfig) -> None:
    """Checks that need neither models nor data, run before any stage so that a typo does not cost a
    training run: the evaluation suites exist, code suites are opted in (HF_ALLOW_CODE_EVAL=1), the
    training launch can run here (strategy, processes, the launcher's own preflight, tracker
    package) and so can the evaluation backend (its own preflight: packages, GPUs)."""
    from shadowft.evaluate import require_code_opt_in, resolve_suites
    from shadowft.evaluate.backends import get_backend
    from shadowft.train.preflight import check_launch

    check_local_inputs(config)
    require_code_opt_in(resolve_suites(config.eval.suites))
    # the launch (processes, nodes, strategy), the launcher's engine config and the tracker: before any stage
    check_launch(config.train)
    # a missing engine or GPU fails now, not after hours of training
    engine = get_backend(config.eval.backend, **_backend_settings(config.eval))
    engine.preflight()
    # and so does a backend for the other modality (a text backend on a VLM pair): every evaluated model
    # is of Instruct's kind; hub ids and `zoo:` names are checked when the eval stage runs
    instruct = Path(config.pair.instruct).expanduser()
    if (instruct / "config.json").is_file():
        engine.check_model(instruct)


def _backend_settings(eval_cfg: EvalConfig) -> dict[str, Any]:
    """The chosen backend's settings (its `eval.<name>` sub-section), as its keyword arguments."""
    settings = eval_cfg.backend_settings
    return settings.model_dump() if settings is not None else {}


def check_local_inputs(config: RunConfig) -> None:
    """Local model dirs and data files exist: a typo fails in milliseconds, before the embedded family
    is installed or a Prefect API starts (hub ids and `zoo:` placeholders are checked where resolved)."""
    from shadowft.data import check_sources_exist, looks_local

    for role, ref in (("base", config.pair.base), ("instruct", config.pair.instruct)):
        p = Path(ref).expanduser()
        if looks_local(ref) and not p.is_dir():
            raise ShadowFTError(
                f"{role} model {ref!r} is not a directory" + (" (it is a file)" if p.exists() else ""),
                hint=f"set pair.{role} to a local model dir or a hub id like Qwen/Qwen3-4B"
                + ("-Base" if role == "base" else ""),
            )
        if not looks_local(ref) and not ref.startswith("zoo:") and not p.exists():
            _check_hub_id(ref, role, getattr(config.pair, f"{role}_revision", None))
    check_sources_exist(config.data.sources)


def _check_hub_id(ref: str, role: str, revision: str | None) -> None:
    """`org/name` that is not a local dir: a hub id, unless `org` is a local folder (then it is a path
    with a typo); offline (HF_HUB_OFFLINE) it must be in the HF cache. Both said in milliseconds,
    not after a hub request and the Prefect start."""
    head = ref.split("/", 1)[0]
    if Path(head).expanduser().is_dir():
        raise ShadowFTError(
            f"{role} model {ref!r}: no such directory ({head}/ exists here, {ref} does not)",
            hint=f"set pair.{role} to an existing model dir (for the hub id {ref}, run from a folder without "
            f"a {head}/ folder)",
        )
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(ref, "config.json", revision=revision), str):
        raise ShadowFTError(
            f"{role} model {ref!r} is not a local directory, and as a hub id it is not in the HF cache while "
            "HF_HUB_OFFLINE is set",
            hint=f"download it first (unset HF_HUB_OFFLINE, or `hf download {ref}`), or give a local model dir",
        )


#: `zoo:vlm-NAME` names a member of the embedded vision-language family (`shadowft.zoo.vlm`):
#: `zoo:vlm-base`, `zoo:vlm-instruct`, `zoo:vlm-chart` (the user's chart data)
VLM_PLACEHOLDER = "vlm-"


def zoo_placeholders(family_root: Path, vlm_family_root: Path | None = None) -> dict[str, Path]:
    """`zoo:NAME` values of the embedded family: base, instruct, every data set by name
    (`zoo:general`, `zoo:domain`), and `zoo:train`, the default fine-tuning set (the domain set:
    a skill Instruct does not have yet); with `vlm_family_root`, the VLM family's as `zoo:vlm-NAME`."""
    root = Path(family_root)
    names: dict[str, Path] = {"base": root / "base", "instruct": root / "instruct"}
    for f in sorted((root / "data").glob("*.jsonl")):
        names[f.stem] = f
    names.setdefault("train", names.get("domain", root / "data" / "train.jsonl"))
    if vlm_family_root is not None:
        vlm = Path(vlm_family_root)
        names |= {f"{VLM_PLACEHOLDER}base": vlm / "base", f"{VLM_PLACEHOLDER}instruct": vlm / "instruct"}
        names |= {f"{VLM_PLACEHOLDER}{f.stem}": f for f in sorted((vlm / "data").glob("*.jsonl"))}
    return names


def uses_vlm_family(placeholders: list[str]) -> bool:
    """Whether any of a config's placeholders names the VLM family (installed only then)."""
    return any(p.startswith(ZOO_PREFIX + VLM_PLACEHOLDER) for p in placeholders)


# -- stage specs ---------------------------------------------------------------------------------
def pair_spec(pair: PairConfig, base: Path, instruct: Path, scope: str) -> StageSpec:
    from shadowft.pair import check_pair

    def produce(tmp: Path) -> dict:
        report = check_pair(
            base,
            instruct,
            scope=scope,
            max_sigma=pair.max_sigma,
            force=pair.force,
            trust_remote_code=pair.trust_remote_code,
            option_names=("pair.max_sigma", "pair.force"),
        )
        (tmp / "pair.json").write_text(json.dumps(report.to_dict(with_tensors=True), indent=2) + "\n")
        return {"sigma_mean": report.sigma.mean if report.sigma else None}

    config = {
        "max_sigma": pair.max_sigma,
        "force": pair.force,
        "scope": scope,
        "trust_remote_code": pair.trust_remote_code,
    }
    return StageSpec("pair", config, {"base": model_ref(base), "instruct": model_ref(instruct)}, produce)


def data_spec(data: DataConfig, instruct: Path, objective: str = "sft") -> StageSpec:
    """Prepared training data, as the objective prepares it (`Objective.prepare_data`: tokenized
    conversations for SFT, rendered pairs for DPO, ...); the objective adds its part to the key."""
    from shadowft.modality import is_multimodal
    from shadowft.train.objectives import get_objective

    impl = get_objective(objective)

    def produce(tmp: Path) -> dict:
        stats = impl.prepare_data(data, instruct, tmp / "data")
        from shadowft.data import load_validation

        validation = load_validation(tmp / "data")
        return {
            "samples": stats.samples,
            "validation_samples": len(validation) if validation is not None else 0,
            "tokens": stats.tokens,
            "dropped": stats.dropped,
            "truncated": stats.truncated,
        }

    media = is_multimodal(instruct)  # a vision-language pair's rows name image files: their content is data
    inputs = {"tokenizer": tokenizer_ref(instruct)}
    inputs.update({f"source{i}": source_ref(s, media) for i, s in enumerate(data.sources)})
    config = data.cache_view()
    inputs.update({f"validation{i}": source_ref(s, media) for i, s in enumerate(data.validation_sources)})
    config.update(impl.data_key())  # SFT adds nothing: its keys are those from before objectives existed
    return StageSpec("data", config, inputs, produce)


def train_spec(
    train: TrainConfig, model: Path, data: Artifact, store: ArtifactStore, progress: Progress | None = None
) -> StageSpec:
    from shadowft.train import train_model

    view = train.cache_view()
    spec = StageSpec("train", view, {"model": model_ref(model), "data": artifact_ref(data)}, lambda tmp: None)

    def produce(tmp: Path) -> dict:
        result = train_model(
            model, data.path / "data", train, tmp / "model", store.work_dir("train", spec.key), progress
        )
        (tmp / "loss_curve.json").write_text(json.dumps(result.loss_curve, indent=2) + "\n")
        # not out_dir: it names the store's temporary dir, renamed away when the artifact is published
        return {"train": {k: v for k, v in result.to_dict().items() if k != "out_dir"}}

    def lend() -> None:
        train_model(
            model,
            data.path / "data",
            train,
            store.work_dir("train", spec.key) / "unused-out",
            store.work_dir("train", spec.key),
            progress,
        )

    spec.produce = produce
    if train.node_rank > 0:
        spec.lend = lend
    return spec


def delta_spec(base: Path, tuned: Artifact) -> StageSpec:
    from shadowft.graft import extract_delta

    def produce(tmp: Path) -> dict:
        return {"delta": extract_delta(base, tuned.path / "model", tmp / "delta").to_dict()}

    return StageSpec("delta", {}, {"base": model_ref(base), "tuned": artifact_ref(tuned)}, produce)


def graft_spec(graft_cfg: GraftConfig, instruct: Path, update: Artifact) -> StageSpec:
    """Graft a delta artifact, or merge a LoRA adapter (a `train` artifact of method lora)."""
    from shadowft.graft import graft

    def produce(tmp: Path) -> dict:
        kwargs: dict[str, Any] = (
            {"delta": update.path / "delta"} if update.stage == "delta" else {"adapter": update.path / "model"}
        )
        report = graft(
            instruct,
            tmp / "model",
            alpha=graft_cfg.numeric_alpha,
            scope=graft_cfg.scope,
            method=graft_cfg.effective_method,
            settings=graft_cfg.method_settings,
            pair_options=None,  # the flow's pair stage has checked (base, instruct) with pair.max_sigma
            **kwargs,
        )
        return {"graft": report.to_dict()}

    inputs = {"instruct": model_ref(instruct), "update": artifact_ref(update)}
    return StageSpec("graft", graft_cfg.cache_view(), inputs, produce)


def val_loss_spec(model: Artifact, data: Artifact) -> StageSpec:
    """A graft's loss on the validation split of the prepared data (`loss.json`)."""
    from shadowft.graft.select import validation_loss

    def produce(tmp: Path) -> dict:
        result = validation_loss(model.path / "model", data.path / "data")
        (tmp / "loss.json").write_text(json.dumps(result, indent=2) + "\n")
        return {"val_loss": result}

    return StageSpec("val_loss", {}, {"model": artifact_ref(model), "data": artifact_ref(data)}, produce)


def alpha_spec(
    graft_cfg: GraftConfig,
    grafts: dict[str, Artifact],
    losses: dict[str, Artifact],
    retention_evals: dict[str, Artifact],
    instruct_eval: Artifact | None,
) -> StageSpec:
    """graft.alpha auto: the choice among the candidates (keyed by alpha as text), from their stored
    measurements: `selection.json`, `alpha.png`, and `chosen_alpha` in the manifest."""
    from shadowft.graft.select import Candidate, choose_alpha, plot_selection, selection_markdown

    def scores(a: Artifact | None) -> dict[str, float | None]:
        if a is None:
            return {}
        suites = json.loads((a.path / "results.json").read_text())["suites"]
        return {s: r["score"] for s, r in suites.items()}

    def produce(tmp: Path) -> dict:
        cands = [
            Candidate(
                alpha=float(a),
                loss=json.loads((losses[a].path / "loss.json").read_text())["loss"],
                scores=scores(retention_evals.get(a)),
                graft=artifact_ref(g),
            )
            for a, g in grafts.items()
        ]
        selection = choose_alpha(cands, scores(instruct_eval), graft_cfg.retention)
        (tmp / "selection.json").write_text(json.dumps(selection.to_dict(), indent=2) + "\n")
        (tmp / "selection.md").write_text(selection_markdown(selection))
        plot_selection(selection, tmp / "alpha.png")
        chosen = next(c for c in cands if c.alpha == selection.chosen_alpha)
        return {"chosen_alpha": selection.chosen_alpha, "chosen_graft": chosen.graft, "selection": selection.to_dict()}

    inputs = {f"graft@{a}": artifact_ref(g) for a, g in grafts.items()}
    inputs |= {f"loss@{a}": artifact_ref(x) for a, x in losses.items()}
    inputs |= {f"eval@{a}": artifact_ref(x) for a, x in retention_evals.items()}
    if instruct_eval is not None:
        inputs["instruct_eval"] = artifact_ref(instruct_eval)
    return StageSpec("alpha", graft_cfg.selection_view(), inputs, produce)


def chosen_graft_spec(graft_cfg: GraftConfig, selection: Artifact, chosen: Artifact) -> StageSpec:
    """The graft of graft.alpha auto: the chosen candidate's model dir (hard links, no second copy)
    with the selection and `chosen_alpha` in its manifest."""
    import os
    import shutil

    def produce(tmp: Path) -> dict:
        src = chosen.path / "model"
        for f in sorted(src.rglob("*")):
            dst = tmp / "model" / f.relative_to(src)
            if f.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, dst)
            except OSError:  # another filesystem: copy
                shutil.copy2(f, dst)
        picked = json.loads((selection.path / "manifest.json").read_text())
        graft_info = json.loads((chosen.path / "manifest.json").read_text())["graft"]
        return {"graft": graft_info, "chosen_alpha": picked["chosen_alpha"], "alpha_selection": picked["selection"]}

    inputs = {"selection": artifact_ref(selection), "chosen": artifact_ref(chosen)}
    return StageSpec("graft", {"alpha": "auto", **graft_cfg.selection_view()}, inputs, produce)


def chosen_alpha(selection: Artifact) -> str:
    """The chosen candidate's alpha, as the text that keys the candidates."""
    return str(float(json.loads((selection.path / "manifest.json").read_text())["chosen_alpha"]))


def eval_spec(
    eval_cfg: EvalConfig,
    model: Path | Artifact,
    allow_code_execution: bool = False,
    store: ArtifactStore | None = None,
    data: Artifact | None = None,
    model_label: str | None = None,
) -> StageSpec:
    """With a `store`, answered requests are cached in the stage's work dir (`eval.request_cache`): a
    killed evaluation re-run answers them from there; the work dir goes once the artifact is published.
    With the prepared `data` of a run that has a validation split (and `eval.own_data`), the `own-data`
    suite is added: its lm-eval task is written into the artifact (`own-data/`) and run with the suites.
    `model_label` names the model on the progress bars (not part of the key)."""
    from shadowft.data import VALIDATION_DIR
    from shadowft.evaluate import evaluate_model, resolve_suites

    resolve_suites(eval_cfg.suites)  # unknown suites fail here, before any stage runs
    model_dir = model.path / "model" if isinstance(model, Artifact) else Path(model)
    ref = artifact_ref(model) if isinstance(model, Artifact) else model_ref(model)
    own = data if eval_cfg.own_data and data is not None and (data.path / "data" / VALIDATION_DIR).is_dir() else None

    def produce(tmp: Path) -> dict:
        from shadowft.evaluate.own_data import write_own_data_task

        cache = store.work_dir("eval", spec.key) if store is not None and eval_cfg.request_cache else None
        suites = list(eval_cfg.suites)
        if own is not None and (folder := write_own_data_task(own.path / "data", tmp / "own-data")) is not None:
            suites.append(str(folder))
        result = evaluate_model(
            model_dir,
            suites,
            tmp,
            label=model_label,
            limit=eval_cfg.limit,
            batch_size=eval_cfg.batch_size,
            apply_chat_template=eval_cfg.apply_chat_template,
            allow_code_execution=allow_code_execution,
            backend=eval_cfg.backend,
            backend_settings=_backend_settings(eval_cfg),
            fewshot_as_multiturn=eval_cfg.fewshot_as_multiturn,
            enable_thinking=eval_cfg.enable_thinking,
            cache_dir=cache,
            threads=eval_cfg.threads,
        )
        return {"scores": {s: r.score for s, r in result.suites.items()}, "backend": result.backend}

    view = eval_cfg.cache_view()
    # A suite given as a folder of the user's task YAMLs is an input: its content is fingerprinted.
    folders = {f"suite:{s}": "fp:" + fingerprint_path(s) for s in eval_cfg.suites if Path(s).is_dir()}
    if own is not None:  # an input, not a setting: evaluations without a validation split keep their keys
        folders["own_data"] = artifact_ref(own)
    spec = StageSpec("eval", {**view, "code": allow_code_execution}, {"model": ref, **folders}, produce)
    return spec


def report_spec(
    evals: dict[str, Artifact], title: str = "Shadow-FT results", selection: Artifact | None = None
) -> StageSpec:
    """The run's report; with graft.alpha auto, the alpha selection (table, `alpha.png`, and
    `alpha_selection` in `summary.json`) is added to it."""
    from shadowft.report import write_report

    def produce(tmp: Path) -> dict:
        results = {name: json.loads((a.path / "results.json").read_text()) for name, a in evals.items()}
        summary = write_report(results, tmp, title=title)
        if selection is not None:
            import shutil

            summary["alpha_selection"] = json.loads((selection.path / "selection.json").read_text())
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            shutil.copy2(selection.path / "alpha.png", tmp / "alpha.png")
            md = (selection.path / "selection.md").read_text()
            (tmp / "report.md").write_text((tmp / "report.md").read_text() + "\n" + md + "\n![alpha](alpha.png)\n")
        return {"summary": summary}

    inputs = {n: artifact_ref(a) for n, a in evals.items()}
    if selection is not None:
        inputs["alpha_selection"] = artifact_ref(selection)
    return StageSpec("report", {"models": list(evals), "title": title}, inputs, produce)


def _model_dir_and_ref(model: Path | Artifact) -> tuple[Path, str]:
    if isinstance(model, Artifact):
        return model.path / "model", artifact_ref(model)
    return Path(model), model_ref(model)


def distance_spec(a: Path | Artifact, b: Path | Artifact) -> StageSpec:
    """The paper's sigma between two full models (model dirs or train/graft artifacts): `sigma.json`."""
    from shadowft.pair import similarity

    dir_a, ref_a = _model_dir_and_ref(a)
    dir_b, ref_b = _model_dir_and_ref(b)

    def produce(tmp: Path) -> dict:
        report = similarity(dir_a, dir_b).to_dict()
        (tmp / "sigma.json").write_text(json.dumps(report, indent=2) + "\n")
        return {"sigma": {k: report[k] for k in ("mean", "median", "max", "min", "n_summarised")}}

    return StageSpec("distance", {}, {"a": ref_a, "b": ref_b}, produce)
