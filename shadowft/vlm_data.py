"""Training data of a vision-language pair: conversations with images, rendered by Instruct's processor.

Rows (the same readers and formats as text, `shadowft.data`):

- LLaMA-Factory's multimodal rows: ``messages`` / sharegpt ``conversations`` (or alpaca) whose text holds
  ``<image>`` placeholders, and an ``images`` list of paths, read relative to the data file's folder
  (for a ``dataset_info.json#NAME`` source, first relative to the dataset_info.json's folder, LLaMA-Factory's
  media_dir); the n-th placeholder is the n-th image, and their counts must match.
- TRL's content parts: ``{"type": "image"}`` and ``{"type": "text", "text": ...}`` in a message's content,
  the images in the row's ``images`` column (paths, ``{"bytes": ...}`` or PIL images of a `datasets` set).

A row is refused with its file and line before anything is trained: counts that differ, an image that
is missing or that PIL cannot read, an image in an assistant turn, videos or audio.

Each sample is rendered with the chat template (an image part becomes the architecture's image marker),
its labels found on the unexpanded rendering exactly as for text (`shadowft.data`: assistant spans by
prefix rendering), then the processor expands each marker into the image's tokens; the expanded ids are
aligned to the unexpanded ones, so labels stay on the assistant's tokens and never fall on an image token.
The prepared dataset stores the images' bytes (a ``datasets.Image`` column): the artifact is
self-contained, and the data stage's key holds the image files' content (`image_files`, read by
`shadowft.stages.source_ref`). Pixel values are computed per batch by `VisionCollator`.
"""

from __future__ import annotations

import difflib
import io
import json
from pathlib import Path
from typing import Any

from shadowft.config import DataConfig
from shadowft.data import (
    IGNORE_INDEX,
    VALIDATION_DIR,
    DataStats,
    SourceStats,
    _exact_spans,
    _Problems,
    _read_source,
    _render,
    check_conversation,
    check_size,
    check_tool_support,
    detect_format,
    held_out,
    known_records,
    prepare_validation,
    publish_prepared,
    record_limit,
    rendered,
    span_labels,
    to_conversation,
    with_system_prompt,
)
from shadowft.errors import ShadowFTError
from shadowft.files import atomic_output_dir, refuse_nonempty
from shadowft.formats import (
    AV_HINT,
    RowRefused,
    check_rendered_tools,
    check_sft_row,
    info_data_path,
    read_dataset_info,
    split_info_source,
    tool_definitions,
    uses_tools,
)

#: LLaMA-Factory's image placeholder (content parts are turned into it, then back into parts)
IMAGE_PLACEHOLDER = "<image>"
IMAGE_HINT = (
    "each <image> placeholder (or {'type': 'image'} content part) takes the next entry of the row's `images` "
    "list: their counts must match"
)
#: processor / tokenizer attributes naming the tokens of an image (marker, soft tokens, begin / end)
IMAGE_TOKEN_ATTRS = (
    "image_token",
    "boi_token",
    "eoi_token",
    "start_image_token",
    "end_image_token",
    "vision_start_token",
    "vision_end_token",
)


# -- images of a row -------------------------------------------------------------------------------


def image_dirs(source: str) -> list[Path]:
    """The folders a source's relative image paths are read from, in order: the dataset_info.json's
    folder (LLaMA-Factory's media_dir) then the data file's; a plain file's folder; none for a hub set."""
    parsed = split_info_source(source)
    if parsed is not None:
        dirs = [parsed[0].parent]
        try:
            data = info_data_path(read_dataset_info(source))
        except ShadowFTError:
            data = None
        if data is not None:
            dirs.append(data if data.is_dir() else data.parent)
        return dirs
    p = Path(source).expanduser()
    return [p.parent if p.is_file() else p] if p.exists() else []


def resolve_image(ref: str, dirs: list[Path]) -> Path:
    """The file an image path names: absolute as it is, else under the first of `dirs` that has it
    (the first of them when none has it: the path the refusal names)."""
    p = Path(ref).expanduser()
    if p.is_absolute() or not dirs:
        return p
    return next((d / p for d in dirs if (d / p).is_file()), dirs[0] / p)


def image_bytes(value: Any, what: str, dirs: list[Path]) -> bytes:
    """The encoded bytes of one entry of a row's ``images`` (a path, ``{"bytes"| "path"}``, a PIL image),
    checked to be an image PIL can read; `RowRefused` names what is wrong."""
    from PIL import Image

    if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):
        data = bytes(value["bytes"])
    elif isinstance(value, (str, dict)):
        ref = value if isinstance(value, str) else value.get("path")
        if not isinstance(ref, str) or not ref.strip():
            raise ValueError(f"{what} must be a path to an image, got {type(value).__name__}")
        path = resolve_image(ref, dirs)
        if not path.is_file():
            raise RowRefused(
                f"{what} {ref!r} does not exist ({path})",
                "relative image paths are read from "
                + (", then ".join(str(d) for d in dirs) or "the working directory")
                + ": fix the path or remove the row",
            )
        data = path.read_bytes()
    elif isinstance(value, Image.Image):
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    else:
        raise ValueError(f"{what} must be a path to an image, got {type(value).__name__}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for a bad file
        raise RowRefused(
            f"{what} is not an image PIL can read ({type(exc).__name__}: {str(exc)[:120]})",
            "replace the file with a PNG / JPEG / WebP image, or remove the row",
        ) from None
    return data


def row_images(record: dict[str, Any]) -> list[Any]:
    """A row's ``images`` column as a list (a single path is one image)."""
    value = record.get("images")
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    return value if isinstance(value, list) else [value]


# -- conversations with images ---------------------------------------------------------------------


def _parts_to_text(content: list[Any], what: str) -> str:
    """TRL content parts as LLaMA-Factory text: each image part becomes an ``<image>`` placeholder."""
    out = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            out.append(part["text"])
        elif kind == "image":
            if any(k in part for k in ("image", "path", "url", "image_url")):
                raise ValueError(
                    f"{what} part {j}: an image part carries its image; put the images in the row's `images` "
                    'column and write {"type": "image"} (TRL\'s format)'
                )
            out.append(IMAGE_PLACEHOLDER)
        elif isinstance(kind, str) and kind.split("_")[0] in ("video", "audio", "input"):
            raise RowRefused(f"{what} part {j} is of type {kind!r}", AV_HINT)
        else:
            raise ValueError(
                f'{what} part {j} must be {{"type": "text", "text": str}} or {{"type": "image"}}, got '
                f"{type(part).__name__ if not isinstance(part, dict) else repr(kind)}"
            )
    return "".join(out)


def _with_text_content(record: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The row with every content-part list turned into text with placeholders."""
    key = next((k for k in ("messages", "conversations", "conversation") if k in record), None)
    if fmt == "alpaca" or key is None or not isinstance(record[key], list):
        return record
    field = "value" if fmt == "sharegpt" else "content"
    turns = []
    for i, turn in enumerate(record[key]):
        if isinstance(turn, dict) and isinstance(turn.get(field), list):
            turn = {**turn, field: _parts_to_text(turn[field], f"{key}[{i}]")}
        turns.append(turn)
    return {**record, key: turns}


def _with_parts(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages whose text holds placeholders as content parts (the form chat templates render);
    the others keep their text."""
    out = []
    for m in msgs:
        if IMAGE_PLACEHOLDER not in m["content"]:
            out.append(m)
            continue
        parts: list[dict[str, Any]] = []
        for k, text in enumerate(m["content"].split(IMAGE_PLACEHOLDER)):
            if k:
                parts.append({"type": "image"})
            if text:
                parts.append({"type": "text", "text": text})
        out.append({**m, "content": parts})
    return out


def vlm_conversation(
    record: Any, fmt: str, dirs: list[Path], max_bytes: int, system_prompt: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, list[bytes]]:
    """(messages with image parts, tool definitions, the images' bytes) of one row; ValueError /
    `RowRefused` naming the problem (counts that differ, a missing or unreadable image)."""
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")  # noqa: TRY004
    msgs, tools = to_conversation(_with_text_content(record, fmt), fmt)
    with_system_prompt(msgs, system_prompt)
    check_conversation(msgs)
    check_size(msgs, max_bytes, tools)
    refs = row_images(record)
    counts = [m["content"].count(IMAGE_PLACEHOLDER) for m in msgs]
    if sum(counts) != len(refs):
        raise RowRefused(
            f"the row has {sum(counts)} <image> placeholder(s) / image part(s) but {len(refs)} image(s)", IMAGE_HINT
        )
    for i, (m, n) in enumerate(zip(msgs, counts, strict=True)):
        if n and m["role"] not in ("user", "system"):
            raise ValueError(f"turn {i} ({m['role']}) holds an image: images belong in user turns")
    images = [image_bytes(v, f"images[{k}]", dirs) for k, v in enumerate(refs)]
    return _with_parts(msgs), tools, images


# -- tokens ----------------------------------------------------------------------------------------


def load_processor(model_dir: Path) -> Any:
    """Instruct's processor (image processor, tokenizer, chat template), refused with a hint when absent."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(model_dir))
    except Exception as exc:  # noqa: BLE001
        raise ShadowFTError(
            f"cannot load a processor from {model_dir}: {str(exc)[:300]}",
            hint="a vision-language Instruct dir holds its processor (processor_config.json or "
            "preprocessor_config.json, the tokenizer and the chat template)",
        ) from None
    tok = getattr(processor, "tokenizer", None)
    if getattr(processor, "image_processor", None) is None or tok is None:
        raise ShadowFTError(
            f"{model_dir} is a vision-language model but has no image processor",
            hint="save the model's processor (AutoProcessor.save_pretrained) into the Instruct dir",
        )
    if not getattr(tok, "chat_template", None):
        tok.chat_template = getattr(processor, "chat_template", None)
    if not tok.chat_template:
        raise ShadowFTError(
            f"the processor in {model_dir} has no chat template",
            hint="Shadow-FT trains Base with the Instruct model's chat template: pass the Instruct model dir",
        )
    if not getattr(tok, "is_fast", False):
        raise ShadowFTError(f"the tokenizer in {model_dir} is not a fast tokenizer (offsets are needed)")
    return processor


def image_token_ids(processor: Any) -> set[int]:
    """Ids of the tokens that stand for an image (its marker, soft tokens, begin / end): never labels."""
    tok = processor.tokenizer
    ids: set[int] = set()
    for owner in (processor, tok):
        for attr in IMAGE_TOKEN_ATTRS:
            token = getattr(owner, attr, None)
            if isinstance(token, str) and token:
                tid = tok.convert_tokens_to_ids(token)
                if isinstance(tid, int) and tid != tok.unk_token_id:
                    ids.add(tid)
        tid = getattr(owner, "image_token_id", None)
        if isinstance(tid, int):
            ids.add(tid)
    return ids


def encode_sample(
    processor: Any,
    msgs: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    images: list[bytes],
    media_ids: set[int],
) -> tuple[list[int], list[int]]:
    """input_ids (image markers expanded by the processor) and labels (-100 outside the assistant's
    answers and on every image token) of one conversation."""
    from PIL import Image as PILImage

    tok = processor.tokenizer
    full = _render(tok, msgs, tools=tools)
    if uses_tools(msgs, tools):
        check_rendered_tools(full, msgs, tools)
    spans = _exact_spans(tok, msgs, full, tools)
    short = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    short_ids = list(short["input_ids"])
    short_labels = span_labels(short_ids, short["offset_mapping"], spans)
    pil = [PILImage.open(io.BytesIO(b)) for b in images]
    enc = processor(text=[full], images=[pil] if pil else None, add_special_tokens=False)
    ids = [int(x) for x in enc["input_ids"][0]]
    labels = [IGNORE_INDEX] * len(ids)
    # the expansion inserts tokens (and may retokenize a marker's neighbours): labels follow the
    # tokens the two tokenizations share
    matcher = difflib.SequenceMatcher(None, short_ids, ids, autojunk=False)
    for a, b, n in matcher.get_matching_blocks():
        labels[b : b + n] = short_labels[a : a + n]
    labels = [IGNORE_INDEX if t in media_ids else y for t, y in zip(ids, labels, strict=True)]
    want = sum(y != IGNORE_INDEX for t, y in zip(short_ids, short_labels, strict=True) if t not in media_ids)
    if sum(y != IGNORE_INDEX for y in labels) != want:
        raise ShadowFTError(
            "the processor's expansion of the images changed the assistant's tokens (cannot place the labels)",
            hint="keep images in user turns, away from the assistant's text",
        )
    return ids, labels


# -- the data stage --------------------------------------------------------------------------------


def vlm_samples(
    spec: DataConfig, processor: Any
) -> tuple[list[list[int]], list[list[int]], list[list[bytes]], list[SourceStats]]:
    """input_ids, labels and images of every kept sample, and the counts per source (`tokenized_samples`
    for a vision-language pair). Bad rows are refused together, with file and line, before any is tokenized."""
    problems = _Problems(
        formats_hint="accepted formats: messages / sharegpt / alpaca with <image> placeholders and an `images` "
        'list, or messages whose content holds {"type": "image"} parts'
    )
    convs: list[tuple[int, str, list[dict[str, Any]], list[dict[str, Any]] | None, list[bytes]]] = []
    per_source: list[SourceStats] = []
    max_bytes = record_limit(spec)
    dirs = {s: image_dirs(s) for s in spec.sources}
    for si, rec, fmt in known_records(
        spec,
        problems,
        per_source,
        lambda name: SourceStats(source=name, format=spec.format),
        detect_format,
        lambda _: (
            "unrecognised record format (expected 'messages' with role/content, "
            "'conversations' with from/value, or instruction/output)"
        ),
        taken=lambda: len(convs),
        check=lambda r: check_sft_row(r, images=True),
        fixed_format=None if spec.format == "auto" else spec.format,
    ):
        try:
            msgs, tools, images = vlm_conversation(rec.data, fmt, dirs[spec.sources[si]], max_bytes, spec.system_prompt)
        except ValueError as exc:
            problems.add_error(rec.where, exc)
            continue
        convs.append((si, rec.where, msgs, tools, images))
    problems.raise_if_any()
    if not convs:
        raise ShadowFTError(
            f"the training data is empty (sources: {', '.join(spec.sources)})",
            hint="add records to the data files or check data.sources",
        )
    check_tool_support(processor.tokenizer, [(where, msgs, tools) for _, where, msgs, tools, _ in convs])
    media = image_token_ids(processor)
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    kept_images: list[list[bytes]] = []
    for si, where, msgs, tools, images in convs:
        st = per_source[si]
        ids, lab = rendered(where, lambda m=msgs, t=tools, im=images: encode_sample(processor, m, t, im, media))
        if len(ids) > spec.max_length:
            # a cut through (or before) an image would leave its pixels without their tokens: dropped
            last_image = max((i for i, t in enumerate(ids) if t in media), default=-1)
            if spec.overlong == "drop" or last_image >= spec.max_length:
                st.dropped += 1
                continue
            ids, lab = ids[: spec.max_length], lab[: spec.max_length]
            if all(x == IGNORE_INDEX for x in lab):
                st.dropped += 1
                continue
            st.truncated += 1
        st.samples += 1
        st.tokens += len(ids)
        st.assistant_tokens += sum(x != IGNORE_INDEX for x in lab)
        input_ids.append(ids)
        labels.append(lab)
        kept_images.append(images)
    if not input_ids:
        raise ShadowFTError(
            f"all {sum(s.dropped for s in per_source)} samples are longer than data.max_length={spec.max_length} "
            f"tokens (overlong={spec.overlong}; a sample cut through an image is dropped)",
            hint="raise data.max_length (each image takes the processor's image tokens)",
        )
    return input_ids, labels, kept_images, per_source


def _features() -> Any:
    from datasets import Features, Image, Sequence, Value

    return Features(
        {
            "input_ids": Sequence(Value("int32")),
            "labels": Sequence(Value("int32")),
            "images": Sequence(Image()),
        }
    )


def _columns(ids: list[list[int]], labels: list[list[int]], images: list[list[bytes]], rows: list[int]) -> dict:
    return {
        "input_ids": [ids[i] for i in rows],
        "labels": [labels[i] for i in rows],
        "images": [[{"bytes": b, "path": None} for b in images[i]] for i in rows],
    }


def prepare_vlm_dataset(spec: DataConfig, tokenizer_dir: Path, out_dir: Path) -> DataStats:
    """`shadowft.data.prepare_dataset` for a vision-language pair: the same layout, plus an ``images``
    column (the images' bytes) and the processor in ``tokenizer/`` (what the trainer collates with)."""
    from datasets import Dataset

    out_dir = Path(out_dir)
    refuse_nonempty(out_dir)
    if spec.packing:
        raise ShadowFTError(
            "data.packing is for text: a vision-language pair's batches are padded",
            hint="set data.packing=false",
        )
    processor = load_processor(Path(tokenizer_dir))
    input_ids, labels, images, per_source = vlm_samples(spec, processor)
    lengths = [len(x) for x in input_ids]
    stats = DataStats(
        samples=len(input_ids),
        tokens=sum(lengths),
        assistant_tokens=sum(s.assistant_tokens for s in per_source),
        dropped=sum(s.dropped for s in per_source),
        truncated=sum(s.truncated for s in per_source),
        max_length=spec.max_length,
        overlong=spec.overlong,
        longest=max(lengths),
        mean_length=round(sum(lengths) / len(lengths), 2),
        sources=per_source,
        out_dir=str(out_dir),
        images=sum(len(x) for x in images),
    )
    held = held_out(len(input_ids), spec.validation_ratio)
    kept = [i for i in range(len(input_ids)) if i not in held]
    with atomic_output_dir(out_dir) as tmp:
        Dataset.from_dict(_columns(input_ids, labels, images, kept), features=_features()).save_to_disk(
            str(tmp / "dataset")
        )
        if held:
            Dataset.from_dict(_columns(input_ids, labels, images, sorted(held)), features=_features()).save_to_disk(
                str(tmp / VALIDATION_DIR)
            )
        elif spec.validation_sources:
            prepare_validation(spec, tokenizer_dir, tmp / VALIDATION_DIR)
        processor.save_pretrained(str(tmp / "tokenizer"))
        on_disk = {k: v for k, v in stats.to_dict().items() if k != "out_dir"}
        (tmp / "stats.json").write_text(json.dumps(on_disk, indent=2) + "\n")
    return stats


# -- preference pairs (DPO) ------------------------------------------------------------------------


def vlm_preference(
    record: Any, fmt: str, dirs: list[Path], max_bytes: int, system_prompt: str | None = None
) -> tuple[list[dict[str, Any]], Any, Any, list[dict[str, Any]] | None, list[bytes]]:
    """(prompt messages with image parts, chosen, rejected, tools, the images' bytes) of one preference
    row; the images belong to the prompt, the replies are text."""
    from shadowft.preference import _as_message, to_preference

    if not isinstance(record, dict):
        raise ValueError(f"a row must be a JSON object, got {type(record).__name__}")  # noqa: TRY004
    if fmt == "messages" and isinstance(record.get("prompt"), list):
        record = {**record, "prompt": _with_text_content({"messages": record["prompt"]}, "messages")["messages"]}
    elif fmt == "sharegpt":
        record = _with_text_content(record, "sharegpt")
    prompt, chosen, rejected = to_preference(record, fmt)
    tools = tool_definitions(record.get("tools"))
    with_system_prompt(prompt, system_prompt)
    check_size([*prompt, _as_message(chosen), _as_message(rejected)], max_bytes, tools)
    for side, reply in (("chosen", chosen), ("rejected", rejected)):
        if IMAGE_PLACEHOLDER in json.dumps(_as_message(reply), ensure_ascii=False):
            raise ValueError(f"field {side!r} holds an <image> placeholder: images belong in the prompt")
    refs = row_images(record)
    n = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in prompt)
    if n != len(refs):
        raise RowRefused(
            f"the prompt has {n} <image> placeholder(s) / image part(s) but {len(refs)} image(s)", IMAGE_HINT
        )
    images = [image_bytes(v, f"images[{k}]", dirs) for k, v in enumerate(refs)]
    return _with_parts(prompt), chosen, rejected, tools, images


def prepare_vlm_preferences(spec: DataConfig, tokenizer_dir: Path, out_dir: Path) -> Any:
    """`shadowft.preference.prepare_preferences` for a vision-language pair: prompt / chosen / rejected
    rendered by Instruct's chat template (the prompt with its image markers), plus an ``images`` column
    (the images' bytes) and the processor in ``tokenizer/``: TRL's `DPOTrainer` expands the markers and
    computes pixel values per batch. The prompt's length counts its image tokens."""
    from datasets import Features, Image, Sequence, Value
    from PIL import Image as PILImage

    from shadowft.formats import check_preference_row
    from shadowft.preference import (
        FORMATS_HINT,
        PreferenceSourceStats,
        PreferenceStats,
        _as_message,
        count_tokens,
        detect_preference_format,
        render_replies,
    )

    out_dir = Path(out_dir)
    refuse_nonempty(out_dir)
    processor = load_processor(Path(tokenizer_dir))
    tok = processor.tokenizer
    problems = _Problems(what="preference data", formats_hint=FORMATS_HINT)
    rows: list[tuple[int, str, list[dict[str, Any]], Any, Any, list[dict] | None, list[bytes]]] = []
    per_source: list[PreferenceSourceStats] = []
    max_bytes = record_limit(spec)
    dirs = {s: image_dirs(s) for s in spec.sources}
    for si, rec, fmt in known_records(
        spec,
        problems,
        per_source,
        lambda name: PreferenceSourceStats(source=name, format="auto"),
        detect_preference_format,
        lambda _: "unrecognised preference row (" + FORMATS_HINT + ")",
        taken=lambda: len(rows),
        check=lambda r: check_preference_row(r, images=True),
    ):
        try:
            row = vlm_preference(rec.data, fmt, dirs[spec.sources[si]], max_bytes, spec.system_prompt)
        except ValueError as exc:
            problems.add_error(rec.where, exc)
            continue
        rows.append((si, rec.where, *row))
    problems.raise_if_any()
    if not rows:
        raise ShadowFTError(
            f"the preference data is empty (sources: {', '.join(spec.sources)})",
            hint="add prompt/chosen/rejected rows to the data files or check data.sources",
        )
    check_tool_support(tok, [(where, [*p, _as_message(c)], t) for _, where, p, c, _, t, _ in rows])
    columns: dict[str, list[Any]] = {"prompt": [], "chosen": [], "rejected": [], "images": []}
    counts = {"prompt": 0, "chosen": 0, "rejected": 0}
    longest = 0
    for si, where, prompt, chosen, rejected, tools, images in rows:
        st = per_source[si]
        pair = rendered(where, lambda p=prompt, c=chosen, r=rejected, t=tools: render_replies(tok, p, (c, r), t))
        texts = dict(zip(("prompt", "chosen", "rejected"), (pair[0], *pair[1]), strict=True))
        pil = [PILImage.open(io.BytesIO(b)) for b in images] if images else None
        enc = processor(text=[texts["prompt"]], images=[pil] if pil else None, add_special_tokens=False)
        n = {"prompt": len(enc["input_ids"][0])}
        n.update({k: count_tokens(tok, texts[k], spec.max_length) for k in ("chosen", "rejected")})
        length = n["prompt"] + max(n["chosen"], n["rejected"])
        if length > spec.max_length:
            if spec.overlong == "drop" or n["prompt"] >= spec.max_length:
                st.dropped += 1  # the prompt (and its images) must fit: TRL keeps the start
                continue
            st.truncated += 1
        longest = max(longest, length)
        st.pairs += 1
        for k in counts:
            columns[k].append(texts[k])
            counts[k] += n[k]
        columns["images"].append([{"bytes": b, "path": None} for b in images])
    dropped = sum(s.dropped for s in per_source)
    if not columns["prompt"]:
        raise ShadowFTError(
            f"all {dropped} preference pairs are longer than data.max_length={spec.max_length} tokens "
            "(a prompt's images count)",
            hint="raise data.max_length, or set data.overlong=truncate",
        )
    stats = PreferenceStats(
        pairs=len(columns["prompt"]),
        prompt_tokens=counts["prompt"],
        chosen_tokens=counts["chosen"],
        rejected_tokens=counts["rejected"],
        dropped=dropped,
        truncated=sum(s.truncated for s in per_source),
        max_length=spec.max_length,
        overlong=spec.overlong,
        longest=longest,
        sources=per_source,
    )
    text = Value("string")
    features = Features({"prompt": text, "chosen": text, "rejected": text, "images": Sequence(Image())})
    publish_prepared(out_dir, columns, features, processor, stats)
    return stats


# -- the data key ----------------------------------------------------------------------------------


def _data_files(source: str) -> tuple[list[Path], str]:
    """The local data files of a source and the column its images are in."""
    parsed = split_info_source(source)
    if parsed is None:
        p = Path(source).expanduser()
        return ([p] if p.is_file() else []), "images"
    try:
        attr = read_dataset_info(source)
    except ShadowFTError:
        return [], "images"
    data = info_data_path(attr)
    if data is None or not data.exists():
        return [], attr.col("images") or "images"
    files = sorted(f for f in data.iterdir() if f.is_file()) if data.is_dir() else [data]
    return files, attr.col("images") or "images"


def _mentions(path: Path, column: str) -> bool:
    """Whether a data file may hold the column (cheap: parquet's schema, a text file's bytes)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            return column in pq.read_schema(path).names
        except Exception:  # noqa: BLE001 - an unreadable file: the data stage reports it
            return False
    needle = json.dumps(column).encode()
    tail = b""
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                if needle in tail + block:
                    return True
                tail = block[-len(needle) :]
    except OSError:
        return False
    return False


def image_files(source: str) -> list[Path]:
    """The image files a local source's rows name (sorted, each once; missing ones left out: the data
    stage refuses their rows): their content is part of the data stage's key. Sources whose files do
    not mention an images column cost a byte search."""
    files, column = _data_files(source)
    if not any(_mentions(f, column) for f in files):
        return []
    dirs = image_dirs(source)
    found: set[Path] = set()
    _, records = _read_source(source, "train", _Problems(), 1 << 62)
    for rec in records:
        if not isinstance(rec.data, dict):
            continue
        for value in row_images(rec.data):
            ref = value if isinstance(value, str) else value.get("path") if isinstance(value, dict) else None
            if isinstance(ref, str) and ref.strip():
                path = resolve_image(ref, dirs)
                if path.is_file():
                    found.add(path.resolve())
    return sorted(found)


# -- batches -----------------------------------------------------------------------------------------


class VisionCollator:
    """Pads input_ids / labels / attention_mask as text batches are padded, and adds what the
    architecture reads besides: the image processor's outputs that the processor lists as model inputs
    (pixel values; Qwen2-VL's grid sizes), and token_type_ids (1 at image tokens: Gemma-3's
    bidirectional attention over an image) where the processor lists them."""

    def __init__(self, processor: Any, pad_to_multiple_of: int | None = None) -> None:
        from shadowft.train.objectives.sft import PadCollator, pad_id

        self.processor = processor
        self.text = PadCollator(pad_id(processor.tokenizer), pad_to_multiple_of)
        names = set(getattr(processor, "model_input_names", ()))
        self.image_keys = names - {"input_ids", "attention_mask", "token_type_ids", "labels"}
        self.token_types = "token_type_ids" in names
        tid = getattr(processor.tokenizer, "image_token_id", None)
        self.image_token_id = tid if isinstance(tid, int) else getattr(processor, "image_token_id", None)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.text([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        images = [img.convert("RGB") for f in features for img in (f.get("images") or [])]
        if images:
            out = self.processor.image_processor(images=images, return_tensors="pt")
            batch.update({k: v for k, v in out.items() if k in self.image_keys})
        if self.token_types:
            batch["token_type_ids"] = (batch["input_ids"] == self.image_token_id).long()
        return batch
