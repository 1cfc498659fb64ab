"""`shadowft chat MODEL_DIR`: ask a model something, with its chat template, to see what it learnt.

One prompt (`--prompt`, the argument after the model dir, or stdin when it is not a terminal) gets
one reply on stdout; with no prompt on a terminal, an interactive loop keeps the conversation
(`/reset` starts over, `/exit` or Ctrl-D ends). Replies are greedy by default, as the evaluation's
are, so what chat shows is what the scores measured.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from shadowft.console import console, err_console
from shadowft.errors import ShadowFTError


@dataclass
class ChatModel:
    """A loaded model and tokenizer, and the conversation so far."""

    model: Any
    tokenizer: Any
    device: str
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    @property
    def has_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, messages: list[dict[str, str]], enable_thinking: bool | None = None) -> str:
        """The prompt text: the chat template with the generation prompt, or (a model without a template,
        e.g. a Base model) the user's last message as plain text to continue."""
        if not self.has_template:
            return messages[-1]["content"]
        kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)

    def reply(
        self,
        prompt: str,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        keep: bool = False,
        enable_thinking: bool | None = None,
    ) -> str:
        """The model's reply to `prompt` after the conversation so far (kept in it with `keep`)."""
        import torch

        system = [{"role": "system", "content": self.system}] if self.system else []
        messages = [*system, *self.history, {"role": "user", "content": prompt}]
        text = self.render(messages, enable_thinking)
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=not self.has_template).to(self.device)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        )
        with torch.no_grad():
            out = self.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                **sampling,
            )
        answer = self.tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        if keep:
            self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return answer


def load_chat_model(
    model_dir: Path,
    device: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    system: str | None = None,
) -> ChatModel:
    """Load a Hugging Face model dir (checked first: a wrong path costs no model load)."""
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise ShadowFTError(
            f"no such model directory: {model_dir}",
            hint="give a model dir, e.g. the paths `shadowft run` prints after its table (runs/<name>/latest/"
            "artifacts.json lists them)",
        )
    if not (model_dir / "config.json").is_file():
        raise ShadowFTError(
            f"{model_dir} is not a model directory (no config.json)",
            hint="give a Hugging Face model directory (config, tokenizer, safetensors)",
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype: Any = "auto" if dtype == "auto" else getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(model_dir), dtype=torch_dtype, trust_remote_code=trust_remote_code
    )
    model = model.to(device)
    model.eval()
    return ChatModel(model=model, tokenizer=tokenizer, device=device, system=system)


def _loop(chat: ChatModel, max_new_tokens: int, temperature: float, enable_thinking: bool | None) -> None:
    err_console.print(
        f"chat with {chat.model.name_or_path} ({'greedy' if temperature <= 0 else f'temperature {temperature}'}); "
        "/reset starts over, /exit or Ctrl-D ends",
        highlight=False,
    )
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            err_console.print()
            return
        text = line.strip()
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            chat.history.clear()
            err_console.print("(conversation cleared)")
            continue
        if not text:
            continue
        answer = chat.reply(text, max_new_tokens, temperature, keep=True, enable_thinking=enable_thinking)
        console.print(f"model> {answer}", markup=False, highlight=False)


def chat(
    model_dir: Annotated[Path, typer.Argument(help="Model directory (Hugging Face format) to talk to.")],
    prompt_arg: Annotated[
        Optional[str], typer.Argument(metavar="[PROMPT]", help="One prompt; without it, stdin or a loop.")
    ] = None,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="One prompt (same as PROMPT).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest reply in tokens.", min=1)] = 256,
    temperature: Annotated[
        float, typer.Option(help="0 = greedy (as the evaluation); above 0 = sampled.", min=0.0)
    ] = 0.0,
    system: Annotated[Optional[str], typer.Option(help="System prompt put before the conversation.")] = None,
    thinking: Annotated[
        Optional[bool],
        typer.Option(
            "--thinking/--no-thinking", help="Qwen3's thinking switch (default: the template's).", show_default=False
        ),
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda, cpu, cuda:1 ... (default: cuda if available).")] = None,
    dtype: Annotated[str, typer.Option(help="Weights dtype: auto (as stored), float32, bfloat16, float16.")] = "auto",
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Run the model repo's own Python code (off by default).")
    ] = False,
) -> None:
    """Ask MODEL_DIR something with its chat template: one reply, or a conversation on a terminal."""
    if prompt is not None and prompt_arg is not None and prompt != prompt_arg:
        raise ShadowFTError("give the prompt once (PROMPT or --prompt)")
    text = prompt if prompt is not None else prompt_arg
    interactive = text is None and sys.stdin.isatty()
    if text is None and not interactive:
        text = sys.stdin.read().strip()
        if not text:
            raise ShadowFTError("no prompt given", hint='shadowft chat MODEL_DIR "your question" (or --prompt)')
    model = load_chat_model(model_dir, device=device, dtype=dtype, trust_remote_code=trust_remote_code, system=system)
    if not model.has_template:
        err_console.print("note: this tokenizer has no chat template; the prompt is continued as plain text")
    if interactive:
        _loop(model, max_new_tokens, temperature, thinking)
        return
    assert text is not None
    answer = model.reply(text, max_new_tokens, temperature, enable_thinking=thinking)
    console.print(answer, markup=False, highlight=False, soft_wrap=True)
