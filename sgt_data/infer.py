"""`sgt-data infer {und,t2i,seg}`: run a base or fine-tuned BAGEL / OmniGen2 checkpoint.

    sgt-data infer und --model bagel --path BAGEL-7B-MoT --image cat.jpg --prompt "What is this?"
    sgt-data infer t2i --model omnigen2 --path OmniGen2 --prompt "a red bicycle" --out bike.png
    sgt-data infer seg --model bagel --path SGT-BAGEL --image street.jpg --out street_seg.png

The front-end only parses arguments, loads the port through its adapter (`sgt_data.models.base`) and saves the
result; every model detail lives in the port.
"""

from __future__ import annotations

import sys
from pathlib import Path

TASKS = ("und", "t2i", "seg")
DEFAULT_SEG_PROMPT = "Segment instances with different colors."


def add_arguments(parser) -> None:
    parser.add_argument(
        "task", choices=TASKS, help="und: image+question -> text; t2i: text -> image; seg: image -> map"
    )
    parser.add_argument("--model", required=True, choices=("bagel", "omnigen2"), help="which port")
    parser.add_argument("--path", help="checkpoint folder (official layout, or what `sgt-data train` saved)")
    parser.add_argument(
        "--overlay", help="fine-tuned weights laid over --path (e.g. Two-hot/SGT-Gen2 transformer/)"
    )
    parser.add_argument(
        "--config", help="with --random: preset name (tiny) or config folder, for smoke tests"
    )
    parser.add_argument(
        "--random", action="store_true", help="random weights from --config (smoke tests only)"
    )
    parser.add_argument(
        "--image", help="input image (und, seg; with t2i: the image to edit, where the port supports it)"
    )
    parser.add_argument("--prompt", help="question (und), description (t2i), instruction (seg)")
    parser.add_argument(
        "--out", help="output PNG (t2i, seg) or text file (und); default: print / ./<task>.png"
    )
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=50, help="flow sampling steps (t2i, seg)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--device", default=None, help="cuda, cpu (default: cuda when available)")
    parser.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="port sampling option: bagel cfg_text_scale=4.0 cfg_img_scale=1.0 shift=3.0; "
        "omnigen2 text_guidance_scale=4.0 image_guidance_scale=1.0 (unknown keys are an error)",
    )


def _options(pairs: list[str]) -> dict:
    from sgt_data.config import parse_override

    out = {}
    for pair in pairs:
        path, value = parse_override(pair)
        out[".".join(path)] = value
    return out


def run(args) -> int:
    import torch
    from PIL import Image

    from sgt_data.models.base import ModelConfig, get_adapter

    if not args.random and not args.path:
        print(
            "sgt-data infer: pass --path CHECKPOINT (or --random --config tiny for a smoke test)",
            file=sys.stderr,
        )
        return 2
    if args.task == "seg" and not args.image:
        print("sgt-data infer seg: --image is required", file=sys.stderr)
        return 2
    if args.task == "t2i" and not args.prompt:
        print("sgt-data infer t2i: --prompt is required", file=sys.stderr)
        return 2
    if args.task == "t2i" and args.image and not getattr(get_adapter(args.model), "supports_edit", False):
        print(f"sgt-data infer t2i: --model {args.model} does not edit images; drop --image", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = ModelConfig(
        name=args.model,
        path=args.path,
        init="random" if args.random else "pretrained",
        config=args.config,
        overlay=args.overlay,
        dtype="bfloat16" if device == "cuda" else "float32",
    )
    adapter = get_adapter(args.model)
    model = adapter.build(cfg, device=device, for_training=False)
    image = Image.open(args.image).convert("RGB") if args.image else None
    opts = _options(args.opt)
    if args.task == "und":
        text = adapter.und(
            model, image, args.prompt or "Describe the image.", max_new_tokens=args.max_new_tokens
        )
        if args.out:
            Path(args.out).write_text(text + "\n")
        print(text)
        return 0
    if args.task == "t2i":
        if image is not None:
            opts["images"] = [image]  # instruction-guided edit of --image
        result = adapter.t2i(
            model, args.prompt, width=args.width, height=args.height, steps=args.steps, seed=args.seed, **opts
        )
    else:
        result = adapter.seg(
            model, image, args.prompt or DEFAULT_SEG_PROMPT, steps=args.steps, seed=args.seed, **opts
        )
    out = Path(args.out or f"{args.task}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    result.save(out)
    print(f"{args.task}: wrote {out} ({result.width}x{result.height})")
    return 0
