"""Verifiable rewards for GRPO (`train.grpo.rewards`): scores computed from the completion and a
reference column of the row, with no model.

Each reward is a class in `REWARDS` with a settings model (the entry's fields besides `name`), the
columns it reads (`columns`) and `make(settings)`: the function TRL's `GRPOTrainer` calls with
``completions`` (texts: the prompts are rendered to text with Instruct's chat template) and every
dataset column as a list, returning one float per completion.

- `exact_match`: the answer extracted from the completion equals the reference column (1 / 0);
- `regex`: the completion matches a pattern (a format reward, 1 / 0);
- `numeric`: the last number of the extracted answer is within a tolerance of the reference (1 / 0);
- `code`: the completion's code passes the row's tests (Python asserts) inside shadowft's sandbox
  (`shadowft.sandbox`): model-written code runs only when the user opted in (HF_ALLOW_CODE_EVAL=1,
  as for the code evaluation suites).

A user's own reward is `train.grpo.reward_module` ("pkg.mod:func" or "path/to/file.py:func"),
called as TRL calls any reward function; the content of its file is part of the train stage's key.

This module imports only the stdlib, pydantic, shadowft.errors and shadowft.registry at its top
level (the config reads the reward settings).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, field_validator

from shadowft.errors import ShadowFTError
from shadowft.registry import SettingsModel

RewardFn = Callable[..., list[float | None]]

#: The answer after an "Answer:" / "The answer is" prefix on the completion's last non-empty line
#: (the embedded family's answer styles), without a trailing period.
DEFAULT_ANSWER = r"(?is)(?:the answer is|answer:)?\s*([^\n]*?)\.?\s*$"
NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def _check_pattern(v: str | None) -> str | None:
    if v is not None:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
    return v


class RewardSettings(SettingsModel):
    """Fields every reward has: its weight in the sum TRL advantages are computed from."""

    weight: float = Field(
        default=1.0, ge=0, le=100, description="Weight of this reward in the total (TRL's reward_weights)."
    )

    @field_validator("pattern", check_fields=False)
    @classmethod
    def _pattern_compiles(cls, v: str | None) -> str | None:
        return _check_pattern(v)


class _AnswerSettings(RewardSettings):
    column: str = Field(default="answer", min_length=1, description="The data column holding the reference answer.")
    pattern: str | None = Field(
        default=None,
        description="Regular expression extracting the answer from the completion (its first group, else the whole "
        "match; the last match counts); empty = the last non-empty line, without an 'Answer:' / 'The answer is' "
        "prefix and a trailing period.",
    )


class ExactMatchSettings(_AnswerSettings):
    name: Literal["exact_match"] = Field(
        default="exact_match", description="exact_match: the extracted answer equals the reference column."
    )
    ignore_case: bool = Field(default=False, description="Compare without regard to case.")


class RegexSettings(RewardSettings):
    name: Literal["regex"] = Field(
        default="regex", description="regex: the completion matches a pattern (a format reward)."
    )
    pattern: str = Field(min_length=1, description="The format the completion must have (a regular expression).")
    full: bool = Field(
        default=True, description="The whole completion (stripped) must match; false = the pattern occurs in it."
    )


class NumericSettings(_AnswerSettings):
    name: Literal["numeric"] = Field(
        default="numeric", description="numeric: the last number is within a tolerance of the reference."
    )
    tolerance: float = Field(default=1e-6, ge=0, description="Largest absolute difference still scored correct.")
    rel_tolerance: float = Field(
        default=0.0, ge=0, description="Largest difference relative to the reference still scored correct."
    )


class CodeSettings(RewardSettings):
    name: Literal["code"] = Field(
        default="code", description="code: the completion passes the row's tests in the sandbox (opt-in)."
    )
    column: str = Field(
        default="tests", min_length=1, description="The data column holding Python test code (asserts) to pass."
    )
    timeout_s: float = Field(default=5.0, gt=0, le=300, description="Wall-clock limit per completion's run.")
    memory_mb: int = Field(default=512, ge=64, le=65536, description="Address-space limit of the sandboxed run.")


# -- extraction ----------------------------------------------------------------------------------


def extract_answer(completion: str, pattern: str | None) -> str | None:
    """The answer in `completion`: the last match of `pattern` (its first group if it has one), or
    the default (the last non-empty line without its answer prefix). None when nothing matches."""
    if pattern is None:
        lines = [ln for ln in completion.strip().splitlines() if ln.strip()]
        if not lines:
            return None
        m = re.match(DEFAULT_ANSWER, lines[-1].strip())
        return m.group(1).strip() if m else lines[-1].strip()
    matches = list(re.finditer(pattern, completion))
    if not matches:
        return None
    last = matches[-1]
    return (last.group(1) if last.re.groups else last.group(0)).strip()


def last_number(text: str | None) -> float | None:
    if text is None:
        return None
    found = re.findall(NUMBER, text.replace(",", ""))
    return float(found[-1]) if found else None


def _text(completion: Any) -> str:
    """A completion's text (a conversational completion: its assistant message's content)."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def _refs(kwargs: dict[str, Any], column: str, name: str, n: int) -> list[Any]:
    refs = kwargs.get(column)
    if refs is None or len(refs) != n:
        raise ShadowFTError(
            f"reward {name}: the data has no column {column!r}",
            hint=f"add {column!r} to every row, or set the reward's column",
        )
    return list(refs)


# -- the rewards ---------------------------------------------------------------------------------


class Reward:
    """A built-in reward. Subclasses set `name`, `summary`, `Settings` and implement `score`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Settings: ClassVar[type[RewardSettings]]
    #: runs model-written code (refused without the opt-in)
    executes_code: ClassVar[bool] = False

    @classmethod
    def columns(cls, settings: Any) -> tuple[str, ...]:
        """The data columns every row must hold for this reward."""
        column = getattr(settings, "column", None)
        return (column,) if column else ()

    @classmethod
    def score(cls, settings: Any, completion: str, reference: Any) -> float:
        raise NotImplementedError

    @classmethod
    def make(cls, settings: Any) -> RewardFn:
        """The function for TRL (named after the reward: TRL logs `rewards/<name>/mean`)."""
        columns = cls.columns(settings)

        def reward(completions: list[Any], **kwargs: Any) -> list[float | None]:
            refs = _refs(kwargs, columns[0], cls.name, len(completions)) if columns else [None] * len(completions)
            return [cls.score(settings, _text(c), r) for c, r in zip(completions, refs, strict=True)]

        reward.__name__ = cls.name
        return reward


class ExactMatch(Reward):
    name = "exact_match"
    summary = "1 when the answer extracted from the completion equals the reference column, else 0"
    Settings = ExactMatchSettings

    @classmethod
    def score(cls, settings: Any, completion: str, reference: Any) -> float:
        got = extract_answer(completion, settings.pattern)
        if got is None or reference is None:
            return 0.0
        want = str(reference).strip()
        if settings.ignore_case:
            got, want = got.casefold(), want.casefold()
        return float(got == want)


class RegexReward(Reward):
    name = "regex"
    summary = "1 when the completion has the format of a regular expression, else 0"
    Settings = RegexSettings

    @classmethod
    def score(cls, settings: Any, completion: str, reference: Any) -> float:
        text = completion.strip()
        match = re.fullmatch(settings.pattern, text) if settings.full else re.search(settings.pattern, text)
        return float(match is not None)


class Numeric(Reward):
    name = "numeric"
    summary = "1 when the last number of the extracted answer is within a tolerance of the reference, else 0"
    Settings = NumericSettings

    @classmethod
    def score(cls, settings: Any, completion: str, reference: Any) -> float:
        got, want = (
            last_number(extract_answer(completion, settings.pattern)),
            last_number(None if reference is None else str(reference)),
        )
        if got is None or want is None:
            return 0.0
        return float(abs(got - want) <= max(settings.tolerance, settings.rel_tolerance * abs(want)))


class Code(Reward):
    name = "code"
    summary = "1 when the completion's Python code passes the row's tests in shadowft's sandbox (opt-in), else 0"
    Settings = CodeSettings
    executes_code = True

    @classmethod
    def score(cls, settings: Any, completion: str, reference: Any) -> float:
        from shadowft.sandbox import run_untrusted

        require_code_opt_in([cls.name])
        if not reference:
            return 0.0
        blocks = CODE_BLOCK.findall(completion)
        code = blocks[-1] if blocks else completion
        result = run_untrusted(f"{code}\n\n{reference}\n", timeout_s=settings.timeout_s, memory_mb=settings.memory_mb)
        return float(result.status == "passed")


REWARDS: dict[str, type[Reward]] = {r.name: r for r in (ExactMatch, RegexReward, Numeric, Code)}

#: One entry of `train.grpo.rewards`: a reward by `name` with its settings (validated by the name).
RewardEntry = Annotated[
    Union[ExactMatchSettings, RegexSettings, NumericSettings, CodeSettings],  # noqa: UP007
    Field(discriminator="name"),
]


def require_code_opt_in(names: list[str]) -> None:
    """Model-written code runs only with the user's opt-in (the code suites' HF_ALLOW_CODE_EVAL=1)."""
    from shadowft.sandbox import CODE_OPT_IN, code_execution_allowed

    if names and not code_execution_allowed():
        raise ShadowFTError(
            f"reward(s) {', '.join(names)} execute model-written code, which is off by default",
            hint=f"opt in with {CODE_OPT_IN}=1 (the code runs in shadowft's sandbox, shadowft/sandbox.py), "
            "or choose another reward",
        )


def build_rewards(entries: list[Any]) -> tuple[list[RewardFn], list[float]]:
    """The reward functions and their weights for TRL, from `train.grpo.rewards` entries."""
    return [REWARDS[e.name].make(e) for e in entries], [e.weight for e in entries]


# -- a user's reward function ----------------------------------------------------------------------


def _split_ref(ref: str) -> tuple[str, str]:
    module, sep, func = ref.rpartition(":")
    if not sep or not module or not func.isidentifier():
        raise ShadowFTError(
            f"train.grpo.reward_module {ref!r} is not 'package.module:function' or 'path/to/file.py:function'",
            hint="name the module and the reward function, separated by a colon",
        )
    return module, func


def reward_module_file(ref: str) -> Path:
    """The source file of a user's reward module (its content is part of the train stage's key)."""
    module, _ = _split_ref(ref)
    if module.endswith(".py") or "/" in module:
        path = Path(module).expanduser()
        if not path.is_file():
            raise ShadowFTError(f"train.grpo.reward_module: no file {module}", hint="give an existing .py file")
        return path.resolve()
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        spec, why = None, f" ({type(exc).__name__}: {exc})"
    else:
        why = ""
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise ShadowFTError(
            f"train.grpo.reward_module: module {module!r} is not importable{why}",
            hint="install it, put its folder on PYTHONPATH, or give the file's path (path/to/file.py:function)",
        )
    return Path(spec.origin).resolve()


def reward_module_hash(ref: str) -> str:
    return hashlib.sha256(reward_module_file(ref).read_bytes()).hexdigest()


def load_reward_function(ref: str) -> RewardFn:
    """The user's reward function named by `ref` ("pkg.mod:func" or "path/to/file.py:func")."""
    module, func = _split_ref(ref)
    path = reward_module_file(ref)
    try:
        if module.endswith(".py") or "/" in module:
            spec = importlib.util.spec_from_file_location(f"shadowft_user_reward_{path.stem}", path)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's code: say what failed, where
        raise ShadowFTError(
            f"train.grpo.reward_module: importing {path} failed: {type(exc).__name__}: {exc}",
            hint="fix the module (it is imported as written)",
        ) from None
    fn = getattr(mod, func, None)
    if not callable(fn):
        raise ShadowFTError(
            f"train.grpo.reward_module: {path} has no function {func!r}",
            hint="define def NAME(completions, **kwargs) -> list[float] (TRL's reward function signature)",
        )
    return fn
