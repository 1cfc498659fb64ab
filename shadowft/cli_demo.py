"""`shadowft demo`: the main job on the embedded default, with no downloads."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from shadowft.cli import app, console


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its models.")] = Path(".shadowft/demo"),
) -> None:
    """Build a tiny Base/Instruct/tuned trio, check the pair, graft, and generate with the result."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shadowft.pair import check_pair
    from shadowft.tiny import make_trio
    from shadowft.weights import extract_delta, graft

    shutil.rmtree(workdir, ignore_errors=True)
    trio = make_trio(workdir / "models", arch="qwen3", tied=True, max_shard_size="100KB", dtype=torch.bfloat16)
    console.rule("pair check")
    report = check_pair(trio["base"], trio["instruct"])
    console.print(f"sigma(base, instruct): mean {report.sigma.mean:.4f}, max {report.sigma.max:.4f}")
    console.rule("delta and graft")
    d = extract_delta(trio["base"], trio["tuned"], workdir / "delta")
    console.print(f"delta: {d.tensors} tensors, {d.bytes_written / 1e3:.0f} kB ({d.dtype})")
    g = graft(trio["instruct"], workdir / "grafted", delta=workdir / "delta", max_shard_size="100KB")
    console.print(f"grafted {g.grafted} tensors (scope {g.scope}), copied {g.copied} from instruct -> {g.out}")
    console.rule("generate with the grafted model")
    tok = AutoTokenizer.from_pretrained(g.out)
    model = AutoModelForCausalLM.from_pretrained(g.out)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "12 + 30"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    console.print(f"prompt {tok.decode(ids['input_ids'][0])!r} -> {tok.decode(out[0][ids['input_ids'].shape[1]:])!r}")
    console.print("(random tiny weights: the text is noise; the mechanics are the real ones)")
