"""The launcher seam: how the processes that run the fit phase are started.

A launcher takes a `TrainJob` and its `LaunchPlan` and returns a `FitOutcome`. In-process runs `fit` here; the
multi-process launchers (`process.py`: torchrun, accelerate launch) write the job to the work dir,
start one process per rank running the same `fit`, relay rank 0's progress events, and return an
outcome whose `save` copies the weights rank 0 wrote. Checkpoints and resume are the same for every launcher
(`shadowft.train.checkpoints`), decided before launch.

A launcher owns everything that varies with it, so no stage or config section names it:

- its settings (`Settings`): the config gets a sub-section `train.<name>` from the registry
  (`shadowft.registry.with_settings_sections`), e.g. `train.accelerate.config`;
- its part of `train.launcher: auto` (`auto_priority` + `suits`) and what it refuses to run
  (`check`), both asked by `shadowft.train.resources.resolve_launch`;
- `resolve`: its settings as the launch plan records them (defaults filled in);
- `preflight`: checks before any model loads (accelerate validates its config file);
- `cache_key`: what its settings add to the train stage's key (the launcher itself is not keyed: it
  is chosen by the machine, and every launcher trains the same model).

The top level of a launcher module imports only the stdlib, pydantic, shadowft.errors,
shadowft.registry and this module (the config imports the registry); the rest goes inside functions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from shadowft.registry import SettingsModel

if TYPE_CHECKING:
    from shadowft.config import TrainConfig
    from shadowft.train.job import FitOutcome, TrainJob
    from shadowft.train.progress import ProgressFn


@dataclass(frozen=True)
class LaunchPlan:
    """How a training job starts: resolved from the `train` section (and the visible devices)."""

    launcher: str  # a name in shadowft.train.launchers.LAUNCHERS
    distributed: str  # none | ddp | fsdp | deepspeed
    num_processes: int  # per node
    num_nodes: int
    node_rank: int
    main_address: str
    main_port: int
    device: str  # cpu | cuda
    settings: dict[str, Any] = field(default_factory=dict)  # the launcher's, resolved (accelerate: its config)

    @property
    def world_size(self) -> int:
        return self.num_processes * self.num_nodes

    def global_batch(self, spec: TrainConfig) -> int:
        """Sequences per optimizer step over all ranks: batch_size x grad_accum x processes x nodes."""
        return spec.batch_size * spec.grad_accum * self.world_size

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "world_size": self.world_size}


@dataclass(frozen=True)
class LaunchRequest:
    """What `resolve_launch` asks a launcher about: the train section and what it resolved to here."""

    spec: TrainConfig
    settings: SettingsModel  # the launcher's own sub-section (train.<name>), or its defaults
    distributed: str  # none | ddp | fsdp | deepspeed (auto resolved)
    world_size: int  # processes x nodes
    device: str  # cpu | cuda


class Launcher:
    """Starts the fit phase of a training job. Subclasses set `name` and implement `launch`."""

    name: ClassVar[str]
    #: The launcher's settings (the `train.<name>` sub-section); none by default.
    Settings: ClassVar[type[SettingsModel]] = SettingsModel
    #: With `train.launcher: auto`, the launcher with the highest priority that `suits` the request
    #: is chosen; one that never suits (the default) is used only when named.
    auto_priority: ClassVar[int] = 0

    @classmethod
    def suits(cls, req: LaunchRequest) -> bool:
        """Whether `train.launcher: auto` may pick this launcher for `req`."""
        return False

    @classmethod
    def check(cls, req: LaunchRequest) -> None:
        """Raise `ShadowFTError` (with a hint) when this launcher cannot run `req`."""

    @classmethod
    def resolve(cls, req: LaunchRequest) -> dict[str, Any]:
        """The launcher's settings as the plan records them (`LaunchPlan.settings`), defaults filled in."""
        return req.settings.model_dump(mode="json")

    @classmethod
    def cache_key(cls, settings: SettingsModel) -> dict[str, Any]:
        """What these settings add to the train stage's key (merged for every registered launcher)."""
        return {}

    def preflight(self, plan: LaunchPlan) -> None:
        """Checks that need no model, before any loads (an engine refusing its config file)."""

    def launch(self, job: TrainJob, plan: LaunchPlan, progress: ProgressFn | None) -> FitOutcome:
        """Run the fit phase of `job` as `plan` says (resolved by `resolve_launch` for this launcher)."""
        raise NotImplementedError
