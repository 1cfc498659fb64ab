"""Ray Train's `TorchTrainer`: one training across the nodes of a Ray cluster, started from one run.

Ray places `world_size` workers (one CPU each, or one GPU each on CUDA) on whichever nodes have them
free and sets up the process group (gloo on CPU, NCCL on GPUs); every worker runs the same rank code
as torchrun's ranks (`shadowft.train.worker.run_rank`) on the job in the launch dir, which must be on
storage every node sees (it lies under the store's work dir). Rank 0's progress events are relayed as
for torchrun; a failed worker fails the launch with its message. Only when named (`train.launcher:
ray-train`): torchrun and accelerate stay the single-node launchers.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shadowft.errors import ShadowFTError
from shadowft.train.launchers.base import Launcher, LaunchPlan, LaunchRequest

if TYPE_CHECKING:
    from shadowft.train.job import FitOutcome, TrainJob
    from shadowft.train.progress import ProgressFn


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: Ray has set RANK / WORLD_SIZE / LOCAL_RANK and the process group."""
    from shadowft.cluster import here
    from shadowft.train.worker import run_rank

    launch_dir = Path(config["launch_dir"])
    rank = int(os.environ.get("RANK", "0"))
    logs = launch_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"rank-{rank}.pid").write_text(f"{os.getpid()}\n")
    (logs / f"rank-{rank}.node").write_text(json.dumps(here()) + "\n")  # where Ray put this rank
    try:
        run_rank(launch_dir)
    except BaseException as exc:  # recorded for the launcher (the first error is the cause), then raised
        record = {
            "rank": rank,
            "time": time.time(),
            "type": type(exc).__name__,
            "message": exc.message if isinstance(exc, ShadowFTError) else str(exc) or type(exc).__name__,
            "hint": exc.hint if isinstance(exc, ShadowFTError) else None,
        }
        (logs / f"rank-{rank}.error").write_text(json.dumps(record) + "\n")
        raise


class RayTrain(Launcher):
    """`ray.train.torch.TorchTrainer` on the connected Ray cluster (`resources.cluster`, or `ray.init`)."""

    name = "ray-train"

    @classmethod
    def check(cls, req: LaunchRequest) -> None:
        if req.distributed not in ("ddp", "none"):
            raise ShadowFTError(
                f"train.launcher=ray-train runs DDP; train.distributed={req.distributed} is not supported by it",
                hint="use train.distributed=ddp (or auto), or train.launcher=accelerate on one node",
            )
        try:
            import ray.train.torch  # noqa: F401
        except ImportError:
            raise ShadowFTError("train.launcher=ray-train needs ray", hint="pip install 'shadowft[cluster]'") from None

    def launch(self, job: TrainJob, plan: LaunchPlan, progress: ProgressFn | None) -> FitOutcome:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from shadowft.train.launchers.process import _outcome, _Relay, rank_failure

        launch_dir = job.work_dir / "launch" / "ray-train"
        shutil.rmtree(launch_dir, ignore_errors=True)
        (launch_dir / "logs").mkdir(parents=True)
        (launch_dir / "job.json").write_text(json.dumps(job.to_json(), indent=2) + "\n")
        (launch_dir / "events.jsonl").touch()
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS") or "auto")
        cuda = plan.device == "cuda"
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"launch_dir": str(launch_dir)},
            scaling_config=ScalingConfig(
                num_workers=plan.world_size, use_gpu=cuda, resources_per_worker={"GPU": 1} if cuda else {"CPU": 1}
            ),
            torch_config=TorchConfig(backend="nccl" if cuda else "gloo"),
            run_config=RunConfig(name="ray-train", storage_path=str(launch_dir / "ray")),
        )
        relay = _Relay(launch_dir / "events.jsonl", progress)
        done = threading.Event()

        def pump() -> None:
            while not done.wait(0.2):
                relay.pump()

        pumper = threading.Thread(target=pump, daemon=True)
        pumper.start()
        try:
            trainer.fit()
        except Exception:
            raise rank_failure(launch_dir, 1, plan.world_size) from None
        finally:
            done.set()
            pumper.join(5)
            relay.pump()
        return _outcome(launch_dir / "final")
