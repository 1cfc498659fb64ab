"""The evaluation backend seam: how generations and log-likelihoods are produced.

A backend turns a model directory into an lm-eval `LM` object. Everything around it (suites, task
building, the run, the results schema) is shared, so every backend writes the same `results.json`.
A backend owns everything that varies with it, so no stage or config section names it:

- its settings (`Settings`, a pydantic model): the config gets a sub-section `eval.<name>` from the
  registry (`shadowft.registry.with_settings_sections`), e.g. `eval.vllm`; the backend is built with
  them (`get_backend(name, **settings)`), and only the chosen backend's sub-section is keyed;
- `preflight`: what it needs (packages, GPUs), checked before any stage runs;
- `check_model(model_dir)`: whether it runs this model (a text backend refuses a vision-language
  model and the other way round), checked before the tasks or the model load;
- `multimodal`: whether it runs tasks with images (a suite with images on a text backend is refused);
- `devices(settings)`: the GPUs one evaluation occupies (checked against the stage's slot when the
  config loads);
- `settings()`: what is recorded with the results.

The top level of a backend module imports only the stdlib, pydantic, shadowft.errors,
shadowft.registry and this module (the config imports the registry); the rest goes inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from shadowft.errors import EvalError
from shadowft.registry import SettingsModel

#: Qwen3's end-of-thinking tag: lm-eval drops the reasoning before it when thinking is on.
THINK_END_TOKEN = "</think>"


@dataclass
class LoadedModel:
    """A model ready for lm-eval, plus what the run records about it."""

    lm: Any  # an lm_eval.api.model.LM
    device: str
    has_chat_template: bool
    max_length: int  # the model's context length (0 = unknown)


class EvalBackend:
    """Loads a model for lm-eval. Subclasses set `name` and implement `load`."""

    name: ClassVar[str]
    #: The backend's settings (the `eval.<name>` sub-section); none by default.
    Settings: ClassVar[type[SettingsModel]] = SettingsModel
    #: Runs tasks whose requests carry images (lm-eval's MULTIMODAL models).
    multimodal: ClassVar[bool] = False

    def __init__(self, **settings: Any) -> None:
        try:
            self.config: BaseModel = self.Settings.model_validate(settings)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {'unknown setting' if e['type'] == 'extra_forbidden' else e['msg']}"
                for e in exc.errors()
            )
            known = ", ".join(self.Settings.model_fields) or "none"
            raise EvalError(f"bad {self.name} setting(s): {problems}", hint=f"{self.name} takes: {known}") from None

    @classmethod
    def devices(cls, settings: BaseModel) -> int:
        """GPUs one evaluation with these settings occupies (0: the stage's one device, or CPU)."""
        return 0

    def preflight(self) -> None:
        """Raise `EvalError` when this backend cannot run here (missing package, no GPU)."""

    def check_model(self, model_dir: Path) -> None:
        """Raise `EvalError` when this backend cannot run the model in `model_dir` (checked before the
        tasks and the model load)."""

    def settings(self) -> dict[str, Any]:
        """The backend's own settings, recorded in `results.json`."""
        return self.config.model_dump(mode="json")

    def load(
        self,
        model_dir: Path,
        *,
        device: str | None,
        batch_size: int | str,
        dtype: str,
        trust_remote_code: bool,
        enable_thinking: bool | None = None,
    ) -> LoadedModel:
        raise NotImplementedError


def thinking_args(enable_thinking: bool | None) -> dict[str, Any]:
    """lm-eval's model arguments for Qwen3's thinking switch (none when unset)."""
    if enable_thinking is None:
        return {}
    return {"enable_thinking": enable_thinking, **({"think_end_token": THINK_END_TOKEN} if enable_thinking else {})}
