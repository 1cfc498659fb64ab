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
                    # preference objectives (DPO): rewards/margins, rewards/accuracies, logps/...
                    **{k: float(v) for k, v in e.items() if k.startswith(("rewards/", "logps/")) and _is_num(v)},
                }
            )
    return out


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


def terminal_progress(role: str, file: Any = None, disable: bool | None = None) -> ProgressFn:
    """A tqdm bar on the terminal for one training run: step of max steps, loss, rate and ETA.

    `disable=None` shows it only on a terminal (a Prefect worker's log gets no carriage-return
    lines); the bar is opened at the first event (when max_steps is known) and closed at the last."""
    from tqdm.auto import tqdm

    state: dict[str, Any] = {"bar": None}

    def report(event: dict[str, Any]) -> None:
        total, step = event.get("max_steps") or 0, event.get("step") or 0
        bar = state["bar"]
        if bar is None:
            bar = state["bar"] = tqdm(
                total=total or None,
                initial=max(step - 1, 0),  # a resumed run starts where its checkpoint was
                desc=f"train {role}",
                unit="step",
                file=file,
                disable=disable,
                mininterval=0.5,
                dynamic_ncols=True,
                leave=True,
            )
        if event.get("loss") is not None:
            bar.set_postfix(loss=f"{event['loss']:.4f}", refresh=False)
        if event.get("event") == "step" and step > bar.n:
            bar.update(step - bar.n)
        if total and step >= total and event.get("event") == "step":
            bar.close()

    return report


def fan_out(*reporters: ProgressFn | None) -> ProgressFn:
    """One progress callback that calls each of `reporters` (the Prefect artifact and the terminal bar)."""
    active = [r for r in reporters if r is not None]

    def report(event: dict[str, Any]) -> None:
        for r in active:
            r(event)

    return report
