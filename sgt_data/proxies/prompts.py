"""Instruction templates per proxy level, picked per sample by a seeded hash of its key.

The choice depends only on (key, seed, level), never on batch order or worker count, so rebuilding a shard gives
byte-identical prompts. The templates are our own wording; they vary verb, object and phrasing so a model does not
overfit one sentence, while every one of them asks for the same target.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sgt_data.proxies.image import Batch, map_ok_rows

SEG_PROMPTS = (
    "Segment instances with different colors.",
    "Give every object in this image its own color.",
    "Paint each separate region of the picture in a distinct color.",
    "Produce an instance segmentation map: one unique color per object.",
    "Color each instance differently.",
    "Split the image into its objects and fill each with a different color.",
    "Show all the segments of this image, each in its own color.",
    "Create a colored mask where every distinct thing has a separate color.",
    "Segment everything in the scene and color the segments uniquely.",
    "Mark each object and object part with a different flat color.",
    "Turn this photo into a segmentation map with one color per instance.",
    "Outline and fill every object with its own color; leave nothing unlabeled if you can.",
    "Draw the instance masks of this image, using a new color for each.",
    "Render a per-instance color segmentation of the image.",
    "Assign a unique color to every region you can find in this image.",
    "Separate the objects in this picture by coloring each one differently.",
    "Generate the segment-everything map for this image.",
    "Replace each object with a solid color, a different one per object.",
    "Make a color-coded map of all instances in the image.",
    "Which pixels belong together? Color each group with its own color.",
    "Decompose the scene into segments and show them in distinct colors.",
    "Fill every segment of the image with a distinct solid color.",
    "Produce masks for all objects, each drawn in a different color.",
    "Color the image by instance: same object, same color; different objects, different colors.",
    "Convert the image into a multi-color instance segmentation.",
    "Highlight every object region with its own unique color.",
    "Label all parts of this image with separate colors.",
    "Create a segmentation where each distinct region gets a unique hue.",
)

EDGE_PROMPTS = (
    "Detect the edges in this image.",
    "Draw the edge map of this picture.",
    "Show only the outlines of the objects, white lines on black.",
    "Extract the edges: white where the image changes sharply, black elsewhere.",
    "Produce a Canny-style edge map of the image.",
    "Trace the contours in this image as thin white lines.",
    "Convert the photo into a line drawing of its edges.",
    "Find all boundaries in the image and draw them in white on black.",
    "Render the edges of every object in the scene.",
    "Keep only the edges of this image.",
    "Make a black image with the image's edges drawn in white.",
    "Outline the structures in this picture with thin lines.",
    "Generate the boundary map of this image.",
    "Where are the edges? Draw them as white lines.",
    "Sketch the edges of the scene on a black background.",
    "Turn this image into its edge map.",
    "Show the object borders and texture edges as a binary image.",
    "Highlight the sharp intensity changes in this image as white lines.",
    "Draw the contour lines of everything visible.",
    "Create an edge detection result for this photo.",
    "Produce a binary map of the edges in this image.",
    "Mark every edge in the picture in white.",
)

DEPTH_PROMPTS = (
    "Estimate the depth of this image.",
    "Generate a depth map for this picture.",
    "Show how far away each part of the scene is.",
    "Produce a depth map: near is bright, far is dark.",
    "Predict the relative depth of every pixel.",
    "Convert this photo into a grayscale depth map.",
    "Render the scene's depth as a grayscale image.",
    "How far is each point from the camera? Draw it as a depth map.",
    "Create a monocular depth estimate of the image.",
    "Map the distance of every surface in this image.",
    "Turn this image into its depth map.",
    "Show the 3D layout of the scene as a depth image.",
    "Generate the relative depth of the objects in this picture.",
    "Make a depth visualization of this scene.",
    "Estimate which parts of the image are close and which are far.",
    "Predict a dense depth map for this photo.",
    "Draw the depth of the scene, brighter for closer surfaces.",
    "Compute the depth map of this image.",
    "Output the per-pixel depth of this scene as a grayscale image.",
    "Give me the depth map of what the camera sees.",
    "Visualize the scene geometry as a depth map.",
    "Recover the depth of this image.",
)

TEMPLATES: dict[str, tuple[str, ...]] = {"seg": SEG_PROMPTS, "edge": EDGE_PROMPTS, "depth": DEPTH_PROMPTS}


def key_seed(key: str, seed: int, purpose: str) -> int:
    """A 64-bit seed from (purpose, seed, key): stable across runs, processes and platforms (unlike hash())."""
    digest = hashlib.blake2b(f"{purpose}\x00{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def choose_prompt(key: str, level: str, seed: int = 0) -> str:
    """The instruction for `key` at `level`; depends only on (key, level, seed)."""
    templates = TEMPLATES[level]
    return templates[key_seed(key, seed, f"prompt_{level}") % len(templates)]


class Prompts:
    """Step: fill `prompt_<level>` for each requested level on every ok row."""

    def __init__(self, levels: Sequence[str] = ("seg", "edge", "depth"), seed: int = 0):
        unknown = [lv for lv in levels if lv not in TEMPLATES]
        if unknown:
            raise ValueError(f"unknown prompt levels {unknown}; choose from {sorted(TEMPLATES)}")
        self.levels = tuple(levels)
        self.seed = int(seed)

    def setup(self) -> None:
        """Nothing heavy to load."""

    def _row(self, batch: Batch, i: int) -> dict[str, Any]:
        key = batch["key"][i]
        return {f"prompt_{lv}": choose_prompt(key, lv, self.seed) for lv in self.levels}

    def __call__(self, batch: Batch) -> Batch:
        return map_ok_rows(batch, self._row, [f"prompt_{lv}" for lv in self.levels])
