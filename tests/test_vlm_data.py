"""Training data of a vision-language pair (`shadowft.vlm_data`): LLaMA-Factory's <image> rows and TRL's
content parts, rendered by the tiny Gemma-3's processor; labels on the assistant's tokens only (never on
an image token); bad rows refused with file and line; the images' content in the data stage's key."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from shadowft.config import DataConfig
from shadowft.data import IGNORE_INDEX, load_prepared, prepare_dataset
from shadowft.errors import ShadowFTError
from shadowft.formats import AV_HINT, MEDIA_HINT, RowRefused, check_sft_row
from shadowft.vlm_data import image_token_ids, load_processor


def _png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _user(content, answer: str) -> list[dict]:
    return [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vlm-images")
    _png(root / "img" / "red.png", (255, 0, 0))
    _png(root / "img" / "blue.png", (0, 0, 255), (16, 24))
    return root


def test_llamafactory_and_trl_rows_mask_prompt_and_image_tokens(gemma3_vlm_trio, images, tmp_path):
    """Three formats, one prepared set: each sample's labels are exactly its answer (and end of turn),
    its image tokens are the processor's (4 soft tokens per image) and never labelled, and the images'
    bytes are stored in the dataset."""
    lf = _jsonl(
        images / "lf.jsonl",
        [
            {"messages": _user("<image>What colour is this?", "red"), "images": ["img/red.png"]},
            {
                "messages": _user("Compare <image> and <image>.", "red then blue"),
                "images": ["img/red.png", "img/blue.png"],
            },
            {"messages": _user("no picture here", "fine")},
        ],
    )
    sharegpt = _jsonl(
        images / "sg.jsonl",
        [
            {
                "conversations": [{"from": "human", "value": "<image>Colour?"}, {"from": "gpt", "value": "blue"}],
                "images": ["img/blue.png"],
            }
        ],
    )
    trl = _jsonl(
        images / "trl.jsonl",
        [
            {
                "messages": _user([{"type": "image"}, {"type": "text", "text": "And this one?"}], "red"),
                "images": ["img/red.png"],
            }
        ],
    )
    stats = prepare_dataset(
        DataConfig(sources=[str(lf), str(sharegpt), str(trl)]), gemma3_vlm_trio["instruct"], tmp_path / "p"
    )
    assert (stats.samples, stats.images) == (5, 5)
    processor = load_processor(tmp_path / "p" / "tokenizer")  # the processor travels with the data
    tok = processor.tokenizer
    media = image_token_ids(processor)
    soft = tok.convert_tokens_to_ids("<image_soft_token>")
    ds = load_prepared(tmp_path / "p")
    answers = ["red", "red then blue", "fine", "blue", "red"]
    counts = [1, 2, 0, 1, 1]
    for row, answer, n in zip(ds, answers, counts, strict=True):
        ids, labels = row["input_ids"], row["labels"]
        learned = [t for t, y in zip(ids, labels, strict=True) if y != IGNORE_INDEX]
        assert tok.decode(learned) == answer + "<|im_end|>"
        assert all(labels[i] in (IGNORE_INDEX, ids[i]) for i in range(len(ids)))
        assert ids.count(soft) == 4 * n  # the processor expanded each image
        assert not any(y != IGNORE_INDEX for t, y in zip(ids, labels, strict=True) if t in media)
        assert len(row["images"]) == n
    stored = ds[1]["images"][1]  # decoded from the bytes in the dataset, not from the file
    assert stored.size == (16, 24) and stored.convert("RGB").getpixel((0, 0)) == (0, 0, 255)


def test_bad_rows_are_refused_with_file_and_line(gemma3_vlm_trio, images, tmp_path):
    (images / "img" / "broken.png").write_bytes(b"not a png at all")
    src = _jsonl(
        tmp_path / "bad.jsonl",
        [
            {"messages": _user("<image>ok", "fine"), "images": [str(images / "img" / "red.png")]},
            {"messages": _user("<image><image>two?", "one"), "images": [str(images / "img" / "red.png")]},
            {"messages": _user("<image>where?", "gone"), "images": ["img/missing.png"]},
            {"messages": _user("<image>broken?", "yes"), "images": [str(images / "img" / "broken.png")]},
            {"messages": _user([{"type": "image"}, {"type": "text", "text": "parts"}], "none"), "images": []},
            {"messages": _user("<video>clip", "no"), "videos": ["v.mp4"]},
        ],
    )
    with pytest.raises(ShadowFTError) as err:
        prepare_dataset(DataConfig(sources=[str(src)]), gemma3_vlm_trio["instruct"], tmp_path / "p")
    msg, hint = err.value.message, err.value.hint or ""
    assert f"{src} line 1" not in msg
    assert f"{src} line 2: the row has 2 <image> placeholder(s) / image part(s) but 1 image(s)" in msg
    assert f"{src} line 3: images[0] 'img/missing.png' does not exist ({tmp_path / 'img' / 'missing.png'})" in msg
    assert f"{src} line 4: images[0] is not an image PIL can read" in msg
    assert f"{src} line 5: the row has 1 <image> placeholder(s) / image part(s) but 0 image(s)" in msg
    assert f"{src} line 6: the row has videos" in msg
    assert "counts must match" in hint and str(tmp_path) in hint and AV_HINT in hint
    assert not (tmp_path / "p").exists()  # refused before anything was written


def test_text_pair_refuses_image_rows_and_says_a_vlm_pair_trains_them():
    row = {"messages": _user("<image>what?", "red"), "images": ["a.png"]}
    with pytest.raises(RowRefused) as err:
        check_sft_row(row)
    assert err.value.hint == MEDIA_HINT and "vision-language pair" in MEDIA_HINT and "text-only" in MEDIA_HINT
    check_sft_row(row, images=True)  # a vision-language pair reads them
    with pytest.raises(RowRefused, match="videos"):
        check_sft_row({**row, "videos": ["v.mp4"]}, images=True)


def test_data_key_holds_the_images_content(gemma3_vlm_trio, tmp_path):
    """Rewriting an image (same path, same data file) changes the data stage's key, for a plain file
    and for a dataset_info.json source; a text source's key is what it was."""
    from shadowft.stages import data_spec, source_ref

    img = _png(tmp_path / "img" / "a.png", (255, 0, 0))
    src = _jsonl(tmp_path / "d.jsonl", [{"messages": _user("<image>colour?", "red"), "images": ["img/a.png"]}])
    (tmp_path / "dataset_info.json").write_text(
        json.dumps(
            {
                "mm": {
                    "file_name": "d.jsonl",
                    "formatting": "sharegpt",
                    "columns": {"messages": "messages", "images": "images"},
                    "tags": {
                        "role_tag": "role",
                        "content_tag": "content",
                        "user_tag": "user",
                        "assistant_tag": "assistant",
                    },
                }
            }
        )
    )
    info = f"{tmp_path / 'dataset_info.json'}#mm"

    def keys() -> tuple[str, str]:
        return tuple(data_spec(DataConfig(sources=[s]), gemma3_vlm_trio["instruct"]).key for s in (str(src), info))

    before = keys()
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), (0, 255, 0)).save(buf, format="PNG")
    img.write_bytes(buf.getvalue())
    after = keys()
    assert before[0] != after[0] and before[1] != after[1]
    text = _jsonl(tmp_path / "t.jsonl", [{"messages": _user("hi", "hello")}])
    from shadowft.fingerprint import fingerprint_path

    assert source_ref(str(text)) == "fp:" + fingerprint_path(text)
