"""The Hub dataset card (`README.md`) of a built folder, rendered from its `manifest.json`.

The YAML header gives the Hub viewer and `datasets.load_dataset` one config per proxy level (or VQA category) plus
an `all` default with every column: `data_files` are the uploaded shards, `columns` pick what matters for the
config, and `dataset_info.features` (written by `datasets` itself from the shard schema) make image columns show as
pictures. The body says what SGT is, lists the prompt templates, counts rows per status, states the licences of the
sources, and records the exact build and push commands. The manifest's `counts`, `rows` and `shards` are required;
everything else is optional and its section is simply left out when absent. No token ever reaches the card:
`push` passes it through `hub.redact` before upload.
"""

from __future__ import annotations

import shlex
from typing import Any

import yaml

REQUIRED = ("counts", "rows", "shards")
KINDS = ("proxies", "ingest", "vqa")
PAPER = "https://arxiv.org/abs/2605.18714"
CODE = "https://github.com/song2yu/SGT"
CITATION = """@misc{yu2026sgt,
  title         = {Semantic Generative Tuning for Unified Multimodal Models},
  author        = {Yu, Songsong and Chen, Yuxin and Shan, Ying and Li, Yanwei},
  year          = {2026},
  eprint        = {2605.18714},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV}
}"""
LICENCES = {
    "proxies": (
        "Images and masks derive from Meta's **SA-1B** (Segment Anything 1-Billion), released under the SA-1B "
        "Dataset Research License: research use only, no redistribution of the images outside its terms, faces "
        "and licence plates blurred. Accept that licence at https://ai.meta.com/datasets/segment-anything/ before "
        "using or re-sharing these rows. Depth targets come from the model named in the manifest; check that "
        "model's licence too (Depth-Anything-V2-Small is Apache-2.0, larger sizes are not)."
    ),
    "vqa": (
        "Rows are a seeded subsample of **LLaVA-OneVision-Data** (lmms-lab). Each `source` config keeps the "
        "licence of its original dataset; several are research-only or non-commercial. Check the licence of every "
        "source listed below on https://huggingface.co/datasets/lmms-lab/LLaVA-OneVision-Data before use."
    ),
}
LICENCES["ingest"] = LICENCES["proxies"]
LICENCE_LINKS = {
    "proxies": "https://ai.meta.com/datasets/segment-anything/",
    "ingest": "https://ai.meta.com/datasets/segment-anything/",
    "vqa": "https://huggingface.co/datasets/lmms-lab/LLaVA-OneVision-Data",
}
LEVEL_TEXT = {
    "seg": "colour-per-instance segmentation map (the SGT proxy)",
    "edge": "edge map (low-level ablation proxy)",
    "depth": "relative depth map (mid-level ablation proxy)",
}


class _NoAliases(yaml.SafeDumper):
    """Write shared lists out in full: the Hub's YAML reader should not need anchors."""

    def ignore_aliases(self, data) -> bool:
        return True


class CardError(ValueError):
    """The manifest lacks what the card needs."""


def infer_kind(manifest: dict[str, Any], columns: list[str]) -> str:
    """The manifest's `kind`, else what the shard columns say it is."""
    kind = manifest.get("kind")
    if kind is not None:
        if kind not in KINDS:
            raise CardError(f"manifest.json kind {kind!r} is not one of {KINDS}")
        return kind
    if "conversations" in columns:
        return "vqa"
    if "annotations" in columns:
        return "ingest"
    return "proxies"


def levels_of(columns: list[str]) -> list[str]:
    """Proxy levels present in the shards, in canonical order."""
    from sgt_data.shards import LEVELS

    return [lv for lv in LEVELS if lv in columns]


def level_columns(level: str, columns: list[str]) -> list[str]:
    """The columns a `level` config shows: identity, input image, the target and its prompt, status."""
    extra = ["depth_min", "depth_max"] if level == "depth" else []
    wanted = [
        "key",
        "source",
        "image",
        "width",
        "height",
        level,
        f"prompt_{level}",
        *extra,
        "status",
        "error",
    ]
    return [c for c in wanted if c in columns]


def build_configs(
    kind: str, columns: list[str], data_files: list[str], levels: list[str], categories: dict[str, int]
) -> list[dict[str, Any]]:
    """`configs:` entries: `all` (default, every column, every row), then one per level / VQA category.

    Level configs keep only `ok` rows (a pyarrow filter the parquet builder applies); category configs keep the
    rows of one category. All read the same shards, so nothing is stored twice."""
    files = [{"split": "train", "path": list(data_files)}]
    configs: list[dict[str, Any]] = [{"config_name": "all", "data_files": files, "default": True}]
    if kind == "proxies":
        for level in levels:
            configs.append(
                {
                    "config_name": level,
                    "data_files": files,
                    "columns": level_columns(level, columns),
                    "filters": [["status", "==", "ok"]],
                }
            )
    elif kind == "vqa":
        for category, name in category_names(categories).items():
            configs.append(
                {
                    "config_name": name,
                    "data_files": files,
                    "filters": [["category", "==", category], ["status", "==", "ok"]],
                }
            )
    return configs


def category_names(categories: dict[str, int]) -> dict[str, str]:
    """Category -> config name (lowercase, `_` for other characters), unique and never the reserved `all`."""
    used, out = {"all"}, {}
    for category in sorted(categories):
        base = (
            "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in category.strip().lower()) or "other"
        )
        name, n = base, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        out[category] = name
    return out


def dataset_info(schema, configs: list[dict[str, Any]], rows_per_config: dict[str, int]) -> list[dict]:
    """`dataset_info:` YAML (features + split sizes per config), serialised by `datasets` from the shard schema."""
    import datasets
    from huggingface_hub import DatasetCardData

    features = datasets.Features.from_arrow_schema(schema)
    infos = {}
    for cfg in configs:
        cols = cfg.get("columns") or list(schema.names)
        split = datasets.SplitInfo("train", num_examples=rows_per_config[cfg["config_name"]])
        infos[cfg["config_name"]] = datasets.DatasetInfo(
            features=datasets.Features({c: features[c] for c in cols}),
            splits=datasets.SplitDict({"train": split}),
        )
    card = DatasetCardData()
    datasets.info.DatasetInfosDict(infos).to_dataset_card_data(card)
    info = card.to_dict()["dataset_info"]
    return info if isinstance(info, list) else [info]


def size_category(rows: int) -> str:
    for bound, label in ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M")):
        if rows < bound:
            return label
    return "1M<n<10M" if rows < 1e7 else "10M<n<100M"


def header(manifest: dict, kind: str, configs: list[dict], info: list[dict]) -> dict[str, Any]:
    tasks = ["visual-question-answering"] if kind == "vqa" else ["image-segmentation", "image-to-image"]
    return {
        "license": "other",
        "license_name": "llava-onevision-per-source" if kind == "vqa" else "sa-1b-research-license",
        "license_link": LICENCE_LINKS[kind],
        "pretty_name": f"SGT {kind} data",
        "task_categories": tasks,
        "tags": ["sgt", "semantic-generative-tuning", "unified-multimodal", kind],
        "size_categories": [size_category(int(manifest["rows"]))],
        "configs": configs,
        "dataset_info": info,
    }


def render_card(
    manifest: dict[str, Any],
    *,
    repo_id: str,
    schema,
    data_files: list[str],
    categories: dict[str, int] | None = None,
    push_command: list[str] | None = None,
) -> str:
    """README.md text: YAML header + body. Raises CardError naming the missing manifest keys."""
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise CardError(
            f"manifest.json lacks {missing}; rebuild the folder with `sgt-data build` to record them"
        )
    columns = list(schema.names)
    kind = infer_kind(manifest, columns)
    levels = levels_of(columns)
    categories = dict(categories or {})
    configs = build_configs(kind, columns, data_files, levels, categories)
    rows = {"all": int(manifest["rows"])}
    rows.update({lv: int(manifest["counts"].get("ok", 0)) for lv in levels})
    rows.update({category_names(categories)[c]: n for c, n in categories.items()})
    meta = header(manifest, kind, configs, dataset_info(schema, configs, rows))
    body = body_text(
        manifest, repo_id=repo_id, kind=kind, configs=configs, levels=levels, push_command=push_command
    )
    return (
        "---\n" + yaml.dump(meta, Dumper=_NoAliases, sort_keys=False, allow_unicode=True) + "---\n\n" + body
    )


def body_text(
    manifest: dict, *, repo_id: str, kind: str, configs: list[dict], levels: list[str], push_command
) -> str:
    parts = [f"# {repo_id}\n", _intro(kind, levels), _usage(repo_id, configs), _counts(manifest)]
    if kind == "proxies":
        parts.append(_prompts(levels))
    parts += [f"## Licence\n\n{LICENCES[kind]}\n", _sources(manifest), _provenance(manifest, push_command)]
    parts.append(f"## Citation\n\n```bibtex\n{CITATION}\n```\n")
    return "\n".join(p for p in parts if p)


def _intro(kind: str, levels: list[str]) -> str:
    text = (
        f"Built with `sgt-data` to reproduce **SGT** (Semantic Generative Tuning, [paper]({PAPER}), "
        f"[code]({CODE})). SGT post-trains unified multimodal models (BAGEL, OmniGen2) with image segmentation "
        "as a *generative* proxy task: given an RGB image and an instruction, the model generates the "
        "colour-per-instance map, which aligns what it understands with what it draws. Edge (low-level) and "
        "depth (mid-level) maps are the ablation proxies; training mixes segmentation with LLaVA-OneVision VQA "
        "at a 2:1 ratio.\n"
    )
    if kind == "proxies":
        text += "\nTargets in this dataset:\n\n" + "".join(f"- `{lv}`: {LEVEL_TEXT[lv]}\n" for lv in levels)
    elif kind == "vqa":
        text += "\nThis dataset holds the VQA side of the mix: `conversations` are `{from, value}` turns.\n"
    else:
        text += (
            "\nThis dataset holds canonical SA-1B rows (image + COCO RLE annotations) ready for proxies.\n"
        )
    return text


def _usage(repo_id: str, configs: list[dict]) -> str:
    lines = ["## Configs\n", "| config | rows | columns |", "|---|---|---|"]
    for cfg in configs:
        which = "`status == ok`" if "columns" in cfg else ("one category" if "filters" in cfg else "all rows")
        cols = ", ".join(f"`{c}`" for c in cfg.get("columns", [])) or "every column"
        lines.append(f"| `{cfg['config_name']}` | {which} | {cols} |")
    example = configs[1]["config_name"] if len(configs) > 1 else "all"
    code = f'```python\nfrom datasets import load_dataset\n\nds = load_dataset("{repo_id}", "{example}", split="train")\n```\n'
    return "\n".join(lines) + "\n\n" + code


def _counts(manifest: dict) -> str:
    lines = ["## Rows per status\n", "| status | rows |", "|---|---|"]
    lines += [f"| `{status}` | {n} |" for status, n in sorted(manifest["counts"].items())]
    lines.append(f"| **total** | {manifest['rows']} |")
    note = (
        "\nEvery input sample is a row: `ok`, or an error class with the reason in `error` "
        f"({manifest['shards']} shards"
    )
    if manifest.get("inputs_total") is not None:
        note += f", {manifest['inputs_total']} inputs counted by the build"
    return "\n".join(lines) + "\n" + note + ").\n"


def _prompts(levels: list[str]) -> str:
    try:
        from sgt_data.proxies.prompts import TEMPLATES
    except ImportError:
        return ""
    out = [
        "## Prompt templates\n",
        "One template per sample, chosen by a seeded hash of its key (`prompt_<level>`).\n",
    ]
    for level in levels:
        items = "".join(f"- {t}\n" for t in TEMPLATES.get(level, ()))
        out.append(
            f"<details><summary><code>{level}</code> ({len(TEMPLATES.get(level, ()))})</summary>\n\n{items}\n</details>\n"
        )
    return "\n".join(out)


def _sources(manifest: dict) -> str:
    """Per-source table of a VQA build (`configs` in its manifest): whose licence applies to which rows."""
    configs = manifest.get("configs")
    if not isinstance(configs, dict) or not configs:
        return ""
    lines = [
        "Source configs in this dataset (each under its own licence):\n",
        "| source | category | rows |",
        "|---|---|---|",
    ]
    for name, info in sorted(configs.items()):
        info = info if isinstance(info, dict) else {}
        rows = sum((info.get("counts") or {}).values())
        lines.append(f"| `{name}` | {info.get('category', '')} | {rows} |")
    return "\n".join(lines) + "\n"


def _provenance(manifest: dict, push_command) -> str:
    out = ["## How this was built\n"]
    tool = f"`{manifest.get('tool', 'sgt-data')}` {manifest.get('version', '')}".strip()
    if manifest.get("git_commit"):
        tool += f" (commit `{manifest['git_commit']}`)"
    out.append(f"Tool: {tool}; created {manifest.get('created', 'unknown')}.\n")
    if manifest.get("command"):
        command = manifest["command"]
        text = command if isinstance(command, str) else shlex.join(str(a) for a in command)
        out.append(f"Build command:\n\n```bash\n{text}\n```\n")
    if push_command:
        out.append(f"Pushed with:\n\n```bash\n{shlex.join(push_command)}\n```\n")
    if manifest.get("inputs"):
        inputs = manifest["inputs"] if isinstance(manifest["inputs"], list) else [manifest["inputs"]]
        shown = "".join(f"- `{i}`\n" for i in inputs[:50])
        more = f"- ... and {len(inputs) - 50} more\n" if len(inputs) > 50 else ""
        out.append(f"Inputs:\n\n{shown}{more}")
    if manifest.get("steps"):
        out.append("Steps:\n\n" + "".join(f"- `{_step(s)}`\n" for s in manifest["steps"]))
    if manifest.get("spec"):
        spec = yaml.safe_dump(manifest["spec"], sort_keys=False)
        out.append(f"<details><summary>Resolved spec</summary>\n\n```yaml\n{spec}```\n</details>\n")
    return "\n".join(out)


def _step(step: Any) -> str:
    if isinstance(step, dict):
        return " ".join(f"{k}={v}" for k, v in step.items())
    return str(step)
