"""Graft scope: which tensors receive the update; everything else is copied from Instruct.

For a vision-language model, the named scope `projections` means the *language model's*
projections: the vision tower's q/k/v and MLP projections (which the reference code's name regex
would also graft) are copied from Instruct. The language model's tensors are found from the model's
own structure (`shadowft.modality`), in both the loaded model's and the checkpoint files' spelling.
A regular expression is the user's explicit choice and applies to every part.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from shadowft.errors import ShadowFTError

# The reference code grafts tensors whose names contain one of these (weights and biases).
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NAMED_SCOPES = ("projections", "all")
#: how the user wrote each compiled scope (a named scope, or the regex)
_WRITTEN: dict[re.Pattern[str], str] = {}


@lru_cache(maxsize=64)
def compile_scope(scope: str, language_model: tuple[str, ...] = ()) -> re.Pattern[str]:
    """`projections` (the paper's default), `all`, or a regular expression searched in names.

    `language_model`: the language model's name prefixes of a vision-language pair
    (`language_model_prefixes`): `projections` then selects only that part's projections."""
    if scope == "projections":
        names = "|".join(re.escape(p) for p in PROJECTIONS)
        if language_model:
            prefixes = "|".join(re.escape(p) for p in language_model)
            pattern = re.compile(rf"^(?:{prefixes})\..*(?:{names})")
        else:
            pattern = re.compile(names)
    elif scope == "all":
        pattern = re.compile("")
    else:
        try:
            pattern = re.compile(scope)
        except re.error as exc:
            raise ShadowFTError(
                f"graft scope {scope!r} is neither 'projections', 'all' nor a valid regular expression ({exc})",
                hint=r"e.g. --scope 'mlp\.' or --scope 'layers\.(1[0-9])\.'",
            ) from None
    _WRITTEN[pattern] = scope
    return pattern


def language_model_prefixes(model_dir: str | Path | None) -> tuple[str, ...]:
    """The language model's name prefixes of a vision-language model dir (module and checkpoint
    spellings); () for a text model, or when the dir is unknown."""
    if model_dir is None:
        return ()
    from shadowft.modality import checkpoint_parts

    return checkpoint_parts(model_dir).spellings("language_model")  # a text model's parts name none


def scope_for(scope: str, model_dir: str | Path | None) -> re.Pattern[str]:
    """The scope as it applies to the tensors of `model_dir` (Instruct): roles of a VLM included."""
    return compile_scope(scope, language_model_prefixes(model_dir))


def in_scope(name: str, scope: str, language_model: tuple[str, ...] = ()) -> bool:
    return compile_scope(scope, language_model).search(name) is not None


def scope_name(pattern: re.Pattern[str]) -> str:
    """How the user wrote the scope `pattern` was compiled from (a named scope, or the regex)."""
    return _WRITTEN.get(pattern, pattern.pattern)
