"""`shadowft chat`: a real tiny model answers with its chat template, as the evaluation saw it."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shadowft.cli import app
from shadowft.errors import ShadowFTError
from shadowft.evaluate import TOY_SYSTEM_PROMPT, evaluate_model

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_chat_replies_greedily_as_the_evaluation_did(zoo_family, tmp_path):
    """The same question, system prompt and chat template: chat's reply is lm-eval's greedy reply."""
    evaluate_model(zoo_family.instruct, ["toy-math"], tmp_path / "ev", limit=2)
    rows = [json.loads(x) for x in (tmp_path / "ev" / "samples_toy_math.jsonl").read_text().splitlines()]
    runner = CliRunner()
    for row in rows:
        question, lm_eval_reply = row["doc"]["question"], row["resps"][0][0].strip()
        ran = runner.invoke(
            app, ["chat", str(zoo_family.instruct), "--prompt", question, "--system", TOY_SYSTEM_PROMPT]
        )
        assert ran.exit_code == 0, ran.output
        assert ran.stdout.strip() == lm_eval_reply and lm_eval_reply
    # the prompt as an argument, or on stdin when stdin is not a terminal
    by_arg = runner.invoke(app, ["chat", str(zoo_family.instruct), "Reverse the digits of 104."])
    by_stdin = runner.invoke(app, ["chat", str(zoo_family.instruct)], input="Reverse the digits of 104.\n")
    assert by_arg.exit_code == 0 and by_stdin.exit_code == 0 and by_arg.stdout == by_stdin.stdout != ""


def test_chat_refuses_a_missing_model_dir_before_loading(tmp_path):
    ran = CliRunner().invoke(app, ["chat", str(tmp_path / "no-such-model"), "--prompt", "hi"])
    assert isinstance(ran.exception, ShadowFTError) and "no such model directory" in ran.exception.message


def _read_until(fd: int, needle: bytes, seen: bytearray, times: int = 1, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while seen.count(needle) < times:
        assert time.monotonic() < deadline, seen.decode(errors="replace")[-2000:]
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                seen.extend(os.read(fd, 4096))
            except OSError:
                break


@pytest.mark.slow
def test_chat_on_a_terminal_is_a_conversation(zoo_family):
    """No prompt on a terminal (a pseudo-terminal here): a loop of turns, ended by /exit."""
    main, sub = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shadowft", "chat", str(zoo_family.instruct), "--system", TOY_SYSTEM_PROMPT],
        stdin=sub, stdout=sub, stderr=sub, env=env, close_fds=True,
    )  # fmt: skip
    os.close(sub)
    seen = bytearray()
    try:
        _read_until(main, b"you> ", seen)
        os.write(main, b"What is 2 + 3?\n")
        _read_until(main, b"you> ", seen, times=2)  # the reply, then the next turn's prompt
        os.write(main, b"/exit\n")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    text = seen.decode(errors="replace")
    reply = text.split("model> ", 1)[1].splitlines()[0].strip()
    assert reply and "/reset" in text  # a reply, and the loop said how to use it
