"""The terminal bar of a training run: driven by the same progress events as the Prefect artifact."""

from __future__ import annotations

import io
import json

from shadowft.config import DataConfig, TrainConfig
from shadowft.data import prepare_dataset
from shadowft.train import train_model
from shadowft.train.progress import fan_out, terminal_progress


def test_training_shows_step_loss_rate_on_the_terminal(llama_trio, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"{a} + 1?"}, {"role": "assistant", "content": str(a + 1)}]}
        for a in range(16)
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prepare_dataset(
        DataConfig(sources=[str(tmp_path / "d.jsonl")], max_length=64), llama_trio["instruct"], tmp_path / "data"
    )
    screen, events = io.StringIO(), []
    spec = TrainConfig(method="lora", max_steps=3, batch_size=4, grad_accum=1, save_steps=100)
    train_model(
        llama_trio["base"],
        tmp_path / "data",
        spec,
        tmp_path / "out",
        tmp_path / "work",
        progress=fan_out(events.append, terminal_progress("base", file=screen, disable=False)),
    )
    shown = screen.getvalue()
    last = shown.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("train base: 100%") and "3/3" in last and "step/s" in last and "loss=" in last
    assert f"loss={events[-1]['loss']:.4f}" in last  # the loss of the last step, as in the loss curve
    assert terminal_progress("x", file=io.StringIO()) is not None  # off the terminal: disabled, still callable
