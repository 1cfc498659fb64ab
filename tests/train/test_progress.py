"""The terminal bar of a training run: driven by the same progress events as the Prefect artifact."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import struct
import termios

from shadowft.config import DataConfig, TrainConfig
from shadowft.data import prepare_dataset
from shadowft.train import train_model
from shadowft.train.progress import fan_out, terminal_progress


def test_training_shows_a_labelled_bar_on_a_terminal_and_lines_off_it(llama_trio, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"{a} + 1?"}, {"role": "assistant", "content": str(a + 1)}]}
        for a in range(16)
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prepare_dataset(
        DataConfig(sources=[str(tmp_path / "d.jsonl")], max_length=64), llama_trio["instruct"], tmp_path / "data"
    )
    # two real (pseudo-)terminals: one of 80 columns, one that reports no size (as `docker exec -t`
    # gives: the bar printed nothing there); a pipe-like stream; the events. All from one training run.
    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    terminal = os.fdopen(sub, "w")
    sizeless_main, sizeless_sub = pty.openpty()
    sizeless = os.fdopen(sizeless_sub, "w")
    piped, events = io.StringIO(), []
    spec = TrainConfig(method="lora", max_steps=3, batch_size=4, grad_accum=1, save_steps=100)
    train_model(
        llama_trio["base"],
        tmp_path / "data",
        spec,
        tmp_path / "out",
        tmp_path / "work",
        progress=fan_out(
            events.append,
            terminal_progress("base", file=terminal),
            terminal_progress("base", file=sizeless),
            terminal_progress("base", file=piped),
        ),
    )
    for stream, fd, width in ((terminal, main, 80), (sizeless, sizeless_main, None)):
        stream.flush()
        shown = b""
        while select.select([fd], [], [], 0.2)[0]:
            shown += os.read(fd, 65536)
        stream.close()
        os.close(fd)
        # on a terminal: a live bar (carriage returns) that says what it counts, the loss, rate and time
        text = shown.decode()
        assert "\r" in text, (width, text)
        states = [s for s in text.replace("\r", "\n").splitlines() if s.strip()]
        last = states[-1]
        assert last.startswith("train base 3/3, loss ") and "step/s" in last and "|" in last, (width, text)
        assert f"loss {events[-1]['loss']:.4f}" in last  # the loss of the last step, as in the loss curve
        if width:
            assert all(len(s) <= width for s in states), states
    # off a terminal: plain lines (no carriage return), the last one with the final step and loss
    lines = piped.getvalue().splitlines()
    assert "\r" not in piped.getvalue() and len(lines) == 3  # 3 steps: a line per tenth of the run
    assert lines[-1].startswith(f"train base 3/3, loss {events[-1]['loss']:.4f}, ") and "done in" in lines[-1]
    quiet = io.StringIO()
    terminal_progress("x", file=quiet, disable=True)({"event": "step", "step": 1, "max_steps": 1})
    assert quiet.getvalue() == ""
