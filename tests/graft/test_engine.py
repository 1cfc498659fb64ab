"""The streaming engine: arithmetic on one thread while it runs, the caller's setting restored."""

from __future__ import annotations

import pytest
import torch

from shadowft.graft import DivergedError, graft
from shadowft.graft.engine import Buffers


def test_one_compute_thread_inside_and_restored_after(llama_trio, tmp_path):
    """The caller's count is set to 3 first: the suite runs with OMP_NUM_THREADS=1, where "1 inside" and
    "restored" would hold whether or not the engine set and restored anything."""
    outer = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        with Buffers():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3
        with pytest.raises(DivergedError), Buffers():
            raise DivergedError("boom")
        assert torch.get_num_threads() == 3
        graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=llama_trio["tuned"])
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(outer)


def _engine_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith(("shadowft-write", "shadowft-read"))]


@pytest.mark.parametrize("alpha", [1.0, 0.3, 1.7])
def test_float32_fast_path_equals_torch_mixed_dtype_add(bf16_trio, tmp_path, alpha):
    """The engine converts every operand to float32 once and combines in float32 (no temporary per
    op); the bytes must be those of the op it replaces, torch.add(bf16 Instruct, float32 update,
    alpha, out=bf16), for any alpha: the graft stays bit-identical to mergekit, PEFT and the paper."""
    from safetensors.torch import load_file

    from tests.helpers import load_dir

    graft(
        bf16_trio["instruct"],
        tmp_path / "o",
        base=bf16_trio["base"],
        tuned=bf16_trio["tuned"],
        alpha=alpha,
        scope="all",
    )
    got = load_dir(tmp_path / "o")
    inst, base, tuned = (load_file(bf16_trio[k] / "model.safetensors") for k in ("instruct", "base", "tuned"))
    for name, i in inst.items():
        update = tuned[name].float() - base[name].float()
        want = torch.add(i, update, alpha=alpha, out=torch.empty_like(i))
        assert torch.equal(got[name].view(torch.uint8), want.view(torch.uint8)), name
    assert not _engine_threads()


def test_writer_and_reader_threads_end_with_the_graft_or_its_failure(llama_trio, tmp_path):
    """The write-behind thread is joined before the shard is checked and closed, also when the
    update diverges mid-tensor: nothing is left running and nothing is written."""
    from safetensors.torch import load_file, save_file

    from tests.helpers import assert_nothing_written, copy_dir

    graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=llama_trio["tuned"], scope="all")
    assert not _engine_threads()
    bad = copy_dir(llama_trio["tuned"], tmp_path / "tuned")
    state = load_file(bad / "model.safetensors")
    state["model.layers.1.self_attn.o_proj.weight"][-1, -1] = float("nan")  # late: earlier chunks are queued
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(DivergedError, match="o_proj"):
        graft(llama_trio["instruct"], tmp_path / "bad", base=llama_trio["base"], tuned=bad, scope="all")
    assert_nothing_written(tmp_path / "bad")
    assert not _engine_threads()


def test_pair_check_inside_the_graft_runs_on_one_thread(llama_trio, tmp_path, monkeypatch):
    """The graft's sampled sigma is many small ops: torch's idle intra-op threads made it take
    0.4-11 s instead of 0.1 s on a busy 2-core machine, so the graft runs it on one thread."""
    import shadowft.pair

    seen: list[int] = []
    sigma = shadowft.pair.tensor_sigma

    def spy(a: torch.Tensor, b: torch.Tensor) -> float:
        seen.append(torch.get_num_threads())
        return sigma(a, b)

    monkeypatch.setattr(shadowft.pair, "tensor_sigma", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        graft(llama_trio["instruct"], tmp_path / "o", base=llama_trio["base"], tuned=llama_trio["tuned"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
