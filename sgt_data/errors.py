"""Per-sample errors: bad input becomes a row with `status` + `error`, never a crashed run.

A step raises `SampleError` (or a subclass) for a problem with one sample; the step wrapper catches it and marks
that row. `status` is a short stable class name users can filter and count on (`bad_image`, `bad_rle`, ...);
`error` is the human sentence naming the input and the fix. Anything else that escapes a step is an
infrastructure fault and aborts the shard (a rerun redoes it).
"""

from __future__ import annotations

OK = "ok"


class SampleError(Exception):
    """One sample is unusable; `status` is its error class."""

    status = "error"

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class BadImage(SampleError):
    """Undecodable, truncated or oversized image bytes."""

    status = "bad_image"


class BadAnnotations(SampleError):
    """Missing or unparsable annotation JSON."""

    status = "bad_annotations"


class BadRLE(SampleError):
    """RLE whose size disagrees with the image, malformed counts string, or too many masks."""

    status = "bad_rle"


class BadTarget(SampleError):
    """A ready-made target (e.g. SAM-SGT colour mask) that cannot be decoded."""

    status = "bad_target"


class MissingPartner(SampleError):
    """An image without its annotation / mask partner, or the reverse."""

    status = "missing_partner"


class BadConversation(SampleError):
    """VQA row without conversations, or `<image>` count != number of images."""

    status = "bad_conversation"


class UnsafeMember(SampleError):
    """A tar member that would write outside the output folder (absolute, `..`, link, device)."""

    status = "unsafe_member"


class PlanChanged(Exception):
    """Not a sample error: the output folder holds shards that this plan would not produce (other settings,
    inputs or sharding). Commands report it and exit 2; `--overwrite` rebuilds the folder."""
