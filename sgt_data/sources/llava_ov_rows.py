"""LLaVA-OV rows -> VQA canonical rows, and the check that turns bad rows into status rows.

Images are kept as the original encoded bytes (never re-encoded); text-only rows keep a null image.
`CheckVqa` is a runner step (batch -> batch, no Ray): a row whose image does not decode, whose conversation is
missing or malformed, or whose `<image>` placeholders do not match its number of images gets `status` and a
human `error`, and stays in the output (counts in == counts out).
"""

from __future__ import annotations

import io
import re
from typing import Any

import pyarrow as pa

from sgt_data.errors import OK, BadConversation, BadImage, SampleError

IMAGE_TOKEN = "<image>"
READ_COLUMNS = ["id", "image", "conversations"]

ROLES = ("human", "gpt")
MAX_ASPECT = 200


def origin_of(path: str, row_group: int, row: int) -> str:
    """Where a kept row came from: `<config>/<file>.parquet:<row group>:<row in group>` (colons never occur in
    config names)."""
    return f"{path}:{row_group}:{row}"


def chunk_from_table(
    table: pa.Table, rows: list[int], config: str, category: str, path: str, row_group: int
) -> dict[str, list]:
    """The selected rows of one row group as a VQA chunk (image + conversations still unchecked)."""
    picked = table.take(pa.array(rows, type=pa.int64())).to_pylist()
    chunk: dict[str, list] = {
        c: [] for c in ("key", "source", "category", "origin", "image", "conversations")
    }
    for row, rec in zip(rows, picked):
        # LLaVA-format ids are not unique (often the image file name, shared by its QA rows): the key adds where
        # the row was read, so every kept row has its own key and `validate` / `push` accept the folder.
        ident = rec.get("id")
        where = origin_of(
            path.rsplit("/", 1)[-1], row_group, row
        )  # file name: the config is in the key already
        chunk["key"].append(f"{config}/{ident}@{where}" if ident not in (None, "") else f"{config}/{where}")
        chunk["source"].append(config)
        chunk["category"].append(category)
        chunk["origin"].append(origin_of(path, row_group, row))
        chunk["image"].append(rec.get("image"))
        chunk["conversations"].append(rec.get("conversations"))
    return chunk


def payload_bytes(chunk: dict[str, list]) -> int:
    """Bytes a chunk keeps: encoded image bytes plus the UTF-8 text of its conversations (ours-vs-fetched)."""
    total = 0
    for image, conv in zip(chunk["image"], chunk["conversations"]):
        if isinstance(image, dict) and image.get("bytes"):
            total += len(image["bytes"])
        for turn in conv or []:
            if isinstance(turn, dict) and isinstance(turn.get("value"), str):
                total += len(turn["value"].encode())
    return total


def normalize_conversations(value: Any) -> list[dict[str, str]]:
    """`[{from, value}, ...]` with string fields and at least one turn, else BadConversation."""
    if not value:
        raise BadConversation("no conversations; the row has nothing to train on")
    if not isinstance(value, list):
        raise BadConversation(
            f"conversations is a {type(value).__name__}, expected a list of {{from, value}}"
        )
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or not isinstance(turn.get("from"), str):
            raise BadConversation(f"turn {i} has no string `from` field")
        if not isinstance(turn.get("value"), str):
            raise BadConversation(f"turn {i} has no string `value` field")
        if turn["from"] not in ROLES:
            # The ports train on LLaVA's two roles; anything else would stop a training run at this row.
            raise BadConversation(
                f"turn {i} role {turn['from']!r}: LLaVA-OneVision rows use human / gpt only"
            )
        turns.append({"from": turn["from"], "value": turn["value"]})
    if not any(t["from"] == "gpt" and t["value"].strip() for t in turns):
        raise BadConversation("no non-empty gpt answer: the row has nothing to train on")
    return turns


def check_image(image: Any) -> dict | None:
    """The `{bytes, path}` struct if it decodes (None stays None); BadImage otherwise."""
    if image is None:
        return None
    data = image.get("bytes") if isinstance(image, dict) else None
    if not data:
        path = image.get("path") if isinstance(image, dict) else None
        if isinstance(image, dict) and path is None:
            return None  # an all-null struct is how some writers store "no image"
        raise BadImage(f"image has no bytes (path={path!r}); the dataset row references a file it lacks")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))  # JPEG: decode at 1/8 scale
            im.load()
    except Exception as err:  # noqa: BLE001 - any decoder failure means the bytes are unusable
        # Decoder messages may embed object addresses ("<_io.BytesIO object at 0x7f...>"): drop them so the
        # same input always gives the same shard bytes.
        reason = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the bytes", str(err))
        raise BadImage(f"image bytes ({len(data)} B) do not decode: {reason}") from err
    if max(width, height) > MAX_ASPECT * min(width, height):
        # Qwen2-VL's resizer (OmniGen2) refuses such images; a training run must not meet them.
        raise BadImage(f"image is {width}x{height}: aspect ratio over {MAX_ASPECT}:1 cannot be tokenised")
    return {"bytes": data, "path": image.get("path")}


def check_row(image: Any, conversations: Any) -> tuple[dict | None, list | None]:
    """Validated (image, conversations) of one row; raises a SampleError naming what is wrong."""
    turns = normalize_conversations(conversations)
    img = check_image(image)
    n_images = 0 if img is None else 1
    tokens = sum(t["value"].count(IMAGE_TOKEN) for t in turns)
    if tokens != n_images:
        raise BadConversation(f"{tokens} {IMAGE_TOKEN} placeholder(s) for {n_images} image(s)")
    return img, turns


class CheckVqa:
    """Runner step: validate every row of a chunk, setting `status`/`error`; bad rows keep what is usable."""

    name = "check_vqa"
    version = 1

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out = dict(batch)
        images, convs, status, error = [], [], [], []
        for image, conv in zip(batch["image"], batch["conversations"]):
            try:
                img, turns = check_row(image, conv)
                images.append(img)
                convs.append(turns)
                status.append(OK)
                error.append(None)
            except SampleError as err:
                images.append(_usable_image(image))
                convs.append(_usable_conversations(conv))
                status.append(err.status)
                error.append(str(err))
        out.update(image=images, conversations=convs, status=status, error=error)
        return out


def _usable_image(image: Any) -> dict | None:
    try:
        return check_image(image)
    except SampleError:
        return None


def _usable_conversations(conv: Any) -> list | None:
    try:
        return normalize_conversations(conv)
    except SampleError:
        return None
