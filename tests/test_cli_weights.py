"""The CLI as a user runs it: real subprocesses, exit codes, no tracebacks for user errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "shadowft"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_help_everywhere():
    for cmd in ([], ["similarity"], ["graft"], ["delta"], ["check-pair"], ["convert"]):
        r = run(*cmd, "--help")
        assert r.returncode == 0, r.stderr
        assert "Usage" in r.stdout


def test_similarity_json(llama_trio):
    r = run("similarity", llama_trio["base"], llama_trio["instruct"], "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert {"mean", "median", "max", "min", "tensors"} <= set(data)
    assert "model.layers.0.self_attn.q_proj.weight" in data["tensors"]


@pytest.mark.slow
def test_delta_then_graft_and_errors(llama_trio, tmp_path):
    r = run("delta", "--base", llama_trio["base"], "--tuned", llama_trio["tuned"], "--out", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    r = run(
        "graft",
        "--instruct",
        llama_trio["instruct"],
        "--delta",
        tmp_path / "d",
        "--out",
        tmp_path / "g",
        "--alpha",
        "0.5",
    )
    assert r.returncode == 0, r.stderr
    assert "grafted 14 tensors" in r.stdout.replace("\n", " ")
    # existing output: refused, exit code 2, no traceback
    r = run("graft", "--instruct", llama_trio["instruct"], "--delta", tmp_path / "d", "--out", tmp_path / "g")
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr
    # no update source
    r = run("graft", "--instruct", llama_trio["instruct"], "--out", tmp_path / "x")
    assert r.returncode == 2 and "exactly one update" in r.stderr and "Traceback" not in r.stderr
    # a missing model dir
    r = run("check-pair", "--base", tmp_path / "missing", "--instruct", llama_trio["instruct"])
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("cmd", [["graft", "--alpha", "abc"], ["similarity"]])
def test_usage_errors_exit_nonzero(cmd):
    r = run(*cmd)
    assert r.returncode != 0 and "Traceback" not in r.stderr


@pytest.mark.slow
def test_graft_alpha_by_module(llama_trio, tmp_path):
    """`--alpha-by-module REGEX=ALPHA` (repeatable, first match wins) against an independent computation."""
    import re

    import torch

    from tests.helpers import load_dir

    rules = ["q_proj|k_proj|v_proj|o_proj=0.5", "mlp=2.0"]
    args = ["graft", "--instruct", llama_trio["instruct"], "--base", llama_trio["base"], "--tuned", llama_trio["tuned"]]
    r = run(*args, "--out", tmp_path / "g", *[a for rule in rules for a in ("--alpha-by-module", rule)])
    assert r.returncode == 0, r.stderr
    assert "per_module" in r.stdout
    b, i, t, got = (
        load_dir(p) for p in (llama_trio["base"], llama_trio["instruct"], llama_trio["tuned"], tmp_path / "g")
    )
    for n, w in i.items():
        a = 0.5 if re.search("q_proj|k_proj|v_proj|o_proj", n) else 2.0 if "mlp" in n else 0.0
        assert torch.equal(got[n], (w.float() + a * (t[n].float() - b[n].float())).to(w.dtype)), n
    for bad, message in [("mlp", "write REGEX=ALPHA"), ("(=0.5", "not a valid regular expression")]:
        r = run(*args, "--out", tmp_path / "x", "--alpha-by-module", bad)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run(*args, "--out", tmp_path / "x", "--method", "slerp")
    assert r.returncode == 2 and "unknown graft method 'slerp'" in r.stderr and "per_module" in r.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_out_that_contains_the_inputs_is_refused_and_nothing_is_deleted(llama_trio, tmp_path):
    """`shadowft graft ... --out v --overwrite` (and `delta`) with the inputs inside v/ exited 0 and left
    only the graft in v/. Now: exit 2, a clean error, every file of v/ kept."""
    import shutil

    v = tmp_path / "v"
    for role in ("instruct", "base", "tuned"):
        shutil.copytree(llama_trio[role], v / role)
    (v / "notes.txt").write_text("mine")
    before = sorted(str(p.relative_to(v)) for p in v.rglob("*"))
    r = run(
        "graft", "--instruct", v / "instruct", "--base", v / "base", "--tuned", v / "tuned", "--out", v, "--overwrite"
    )
    assert r.returncode == 2 and "contains the input" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run("delta", "--base", v / "base", "--tuned", v / "tuned", "--out", v, "--overwrite")
    assert r.returncode == 2 and "contains the input" in r.stderr and "Traceback" not in r.stderr, r.stderr
    # --overwrite of a folder shadowft did not write
    r = run("delta", "--base", v / "base", "--tuned", v / "tuned", "--out", tmp_path / "mine", "--overwrite")
    assert r.returncode == 0, r.stderr
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "data.txt").write_text("x")
    r = run("delta", "--base", v / "base", "--tuned", v / "tuned", "--out", tmp_path / "user", "--overwrite")
    assert r.returncode == 2 and "not written by shadowft" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert sorted(str(p.relative_to(v)) for p in v.rglob("*")) == before
    assert (tmp_path / "user" / "data.txt").exists()


def test_graft_command_ends_without_interpreter_teardown(llama_trio, tmp_path):
    """`shadowft graft` run as the program ends at once when its output is published: Python's
    teardown of what torch loaded took 0.7-1.7 s of the command on a 2-core machine. Seen from an
    atexit hook, which then never runs; the output is complete and the exit code is kept."""
    marker = tmp_path / "teardown-ran"
    prog = (
        "import atexit, runpy, sys; "
        f"atexit.register(lambda: open({str(marker)!r}, 'w').close()); "
        "sys.argv = ['shadowft', *sys.argv[1:]]; runpy.run_module('shadowft', run_name='__main__', alter_sys=True)"
    )
    graft = [
        "graft",
        "--instruct",
        llama_trio["instruct"],
        "--base",
        llama_trio["base"],
        "--tuned",
        llama_trio["tuned"],
    ]
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", prog, *map(str, graft), "--out", tmp_path / "o"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "grafted" in r.stdout and (tmp_path / "o" / "model.safetensors").is_file()
    assert not marker.exists()
    # and a plain graft imports what it computes with, none of the pipeline's heavy dependencies
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in r.stderr.splitlines() if "|" in line}
    assert "torch" in imported and not imported & {"prefect", "transformers", "lm_eval", "datasets", "peft", "flows"}
    r = subprocess.run(
        [sys.executable, "-c", prog, *map(str, graft), "--out", tmp_path / "o"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "error:" in r.stderr and not marker.exists()  # --out exists: a user error
    r = subprocess.run([sys.executable, "-c", prog, "--version"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and marker.exists()  # other commands end as usual


def test_check_pair_of_a_vlm_prints_sigma_per_part_and_what_the_graft_copies(llava_vlm_trio):
    r = run("check-pair", "--base", llava_vlm_trio["base"], "--instruct", llava_vlm_trio["instruct"])
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())  # rich wraps at 80 columns without a terminal
    assert "sigma by part:" in out and "vision_tower" in out and "language_model" in out
    assert "copied from instruct" in out
