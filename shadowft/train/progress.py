"""Progress of a training run: the loss curve from the Trainer's log, and the per-step callback.

Every launcher reports the same events (rank 0 only): ``{"event": "step"|"log", "step", "max_steps",
"loss", "epoch", ...}``; the live curve is kept in ``work_dir/loss_curve.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from shadowft.files import write_json_atomic

ProgressFn = Callable[[dict[str, Any]], None]


def loss_curve(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """The logged training losses (step, loss, lr, epoch, grad_norm) from a Trainer's `log_history`."""
    out = []
    for e in log_history:
        if "loss" in e and "step" in e:
            out.append(
                {
                    "step": int(e["step"]),
                    "loss": float(e["loss"]),
                    "lr": float(e.get("learning_rate", float("nan"))),
                    "epoch": float(e.get("epoch", 0.0)),
                    **({"grad_norm": float(e["grad_norm"])} if e.get("grad_norm") is not None else {}),
                    # preference objectives: rewards/margins, rewards/accuracies, logps/... (DPO, KTO) and
                    # the KL reference point (KTO's "kl"); GRPO's reward, rewards/<name>/mean|std, kl and
                    # completion lengths
                    **{k: float(v) for k, v in e.items() if _curve_metric(k) and _is_num(v)},
                }
            )
    return out


def _curve_metric(key: str) -> bool:
    return key.startswith(("rewards/", "logps/")) or key in GRPO_METRICS


#: GRPO's metrics kept beside its rewards/* (TRL's GRPOTrainer log)
GRPO_METRICS = ("kl", "reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "entropy")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def progress_callback(progress: ProgressFn | None, work_dir: Path) -> Any:
    """A transformers `TrainerCallback` relaying steps and logs to `progress`, keeping the live curve."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        """Reports every optimizer step to `progress` and keeps a live loss curve in the work dir.

        A step that is also logged is reported after its log, so the event carries that step's loss.
        """

        last_loss: float | None = None
        pending: dict[str, Any] | None = None

        def _flush(self) -> None:
            if self.pending is not None:
                event, self.pending = {**self.pending, "loss": self.last_loss}, None
                if progress is not None:
                    progress(event)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if not state.is_world_process_zero:  # launched jobs: rank 0 reports (issue 12)
                return
            self.pending = {
                "event": "step",
                "step": state.global_step,
                "max_steps": state.max_steps,
                "epoch": state.epoch,
            }
            if not control.should_log:  # DefaultFlowCallback (which runs first) decided about logging
                self._flush()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if not state.is_world_process_zero:  # launched jobs: rank 0 reports (issue 12)
                return
            if logs and "loss" in logs:
                self.last_loss = float(logs["loss"])
                write_json_atomic(work_dir / "loss_curve.json", loss_curve(state.log_history))
                if progress is not None:
                    progress(
                        {
                            "event": "log",
                            "step": state.global_step,
                            "max_steps": state.max_steps,
                            "loss": self.last_loss,
                            "lr": logs.get("learning_rate"),
                            "epoch": state.epoch,
                        }
                    )
            self._flush()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._flush()

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._flush()

    return _Progress()


#: The live bar: what it counts first (``train base 12/100, loss 1.2345``), then the bar, time left, rate.
BAR_FORMAT = "{desc} {n_fmt}/{total_fmt}{postfix} |{bar}| {elapsed}<{remaining}, {rate_fmt}"
#: Off a terminal, a progress line at most this often (seconds), besides every tenth of the run.
LINE_EVERY_S = 30.0


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False


def _terminal_columns(stream: Any) -> int:
    """The terminal's width, 0 when it reports none: a pseudo-terminal whose size was never set
    (`docker exec -t`, `script`, some IDE and CI terminals) says 0 columns, and a tqdm bar sized to
    it (`dynamic_ncols`) prints nothing at all: the training bar that "did not appear" (issue 26)."""
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def terminal_progress(role: str, file: Any = None, disable: bool | None = None) -> ProgressFn:
    """The progress of one training run on stderr (or `file`), labelled with what it trains.

    On a terminal (or `disable=False`): a live tqdm bar, ``train base 12/100, loss 1.2345 |███ |
    00:05<00:36, 2.5 step/s``. Off a terminal (a pipe, `tee`, an IDE console, a Prefect worker's
    log), where a live bar would be carriage-return garbage and was hidden before: a plain line
    every tenth of the run or `LINE_EVERY_S` seconds, and at the end (``train base 100/100, loss
    0.8123, 2.5 step/s, done in 0:40``). `disable=True`: nothing. The bar is opened at the first
    event (when max_steps is known) and closed at the last."""
    import sys
    import time

    from tqdm.auto import tqdm

    stream = file if file is not None else sys.stderr
    live = (not disable) if disable is not None else _is_terminal(stream)
    state: dict[str, Any] = {"bar": None, "start": None, "first": 0, "last_line": 0.0, "last_step": -1, "done": False}
    label = f"train {role}"

    def line(step: int, total: int, loss: float | None, final: bool) -> None:
        now = time.monotonic()
        done = step - state["first"]
        rate = done / (now - state["start"]) if now > state["start"] and done > 0 else None
        parts = [f"{label} {step}/{total or '?'}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if rate:
            parts.append(f"{rate:.2f} step/s")
            left = (total - step) / rate if total else None
            if final:
                parts.append(f"done in {tqdm.format_interval(now - state['start'])}")
            elif left is not None:
                parts.append(f"{tqdm.format_interval(left)} left")
        print(", ".join(parts), file=stream, flush=True)
        state["last_line"], state["last_step"] = now, step

    def report(event: dict[str, Any]) -> None:
        if disable or state["done"]:
            return
        total, step = event.get("max_steps") or 0, event.get("step") or 0
        loss = event.get("loss")
        is_step = event.get("event") == "step"
        final = bool(total and step >= total and is_step)
        if state["start"] is None:
            state["start"], state["first"] = time.monotonic(), max(step - 1, 0)  # resumed: from its checkpoint
            state["last_line"] = state["start"]
        if not live:
            if loss is not None:
                state["loss"] = loss
            tenth = max(total // 10, 1) if total else 0
            due = time.monotonic() - state["last_line"] >= LINE_EVERY_S or (
                tenth and step // tenth > state["last_step"] // tenth
            )
            if is_step and step > state["last_step"] and (final or due):
                line(step, total, state.get("loss"), final)
            state["done"] = final
            return
        bar = state["bar"]
        if bar is None:
            bar = state["bar"] = tqdm(
                total=total or None,
                initial=state["first"],
                desc=label,
                unit="step",
                file=stream,
                disable=False,
                mininterval=0.5,
                dynamic_ncols=_terminal_columns(stream) > 0,  # a width of 0 would hide the bar
                leave=True,
                bar_format=BAR_FORMAT if total else None,
            )
        if loss is not None:
            bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
        if is_step and step > bar.n:
            bar.update(step - bar.n)
        if final:
            bar.close()
            state["done"] = True

    return report


def fan_out(*reporters: ProgressFn | None) -> ProgressFn:
    """One progress callback that calls each of `reporters` (the Prefect artifact and the terminal bar)."""
    active = [r for r in reporters if r is not None]

    def report(event: dict[str, Any]) -> None:
        for r in active:
            r(event)

    return report
