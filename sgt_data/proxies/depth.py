"""The depth target: Depth-Anything-V2 relative inverse depth as a 16-bit PNG at the image's size.

Convention. The model predicts *relative inverse depth* (disparity-like: larger = nearer, no metric scale).
Per image, the prediction at network resolution is min-max normalised, resized back to the image's size
(bilinear, so values stay inside [0, 1]), and stored as `round(65535 * v)` in a single-channel 16-bit PNG.
`depth_min` / `depth_max` keep the raw range, so `raw = depth_min + png / 65535 * (depth_max - depth_min)`.
A constant prediction (max == min) is stored as all zeros.

The step runs in three parts so the accelerator never waits on a decoder: `prepare` (decode -- JPEGs at a
reduced DCT scale when much larger than the model's grid -- and resize to that grid as uint8: CPU, in the shard
tasks), `infer` (normalise, batched forward per input shape, per-image min-max, bilinear resize back and 16-bit
quantisation, all on the device: the actor), `finish` (PNG encode: CPU). `__call__` runs all three, which is
what a pool that only knows `step(batch)` gets. Preprocessing follows the model's own image-processor config
(size, keep-aspect, multiple-of, mean/std) with OpenCV instead of PIL; area resampling when shrinking keeps it
anti-aliased like the processor's bicubic (tests compare both).
"""

from __future__ import annotations

import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sgt_data.errors import BadImage, SampleError
from sgt_data.proxies.image import (
    DEFAULT_MAX_PIXELS,
    Batch,
    check_complete,
    decode_image,
    header_size,
    map_ok_rows,
)

DEFAULT_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
DEFAULT_ENDPOINT = "https://huggingface.co"
_DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
           "half": "float16", "fp32": "float32", "float32": "float32"}  # fmt: skip


class BadDepth(SampleError):
    """The model produced a non-finite depth map for this image."""

    status = "bad_depth"


# ---------------------------------------------------------------- plan time: is the model usable?


def local_dir_for(model: str) -> str:
    """Where the suggested fetch command puts a Hub model: `models/<repo name>`."""
    return f"models/{model.rstrip('/').split('/')[-1]}"


def fetch_command(model: str, endpoint: str | None = None) -> str:
    """The exact shell command that downloads `model` (honouring a mirror / custom endpoint, Xet off there)."""
    env = ""
    if endpoint and endpoint.rstrip("/") != DEFAULT_ENDPOINT:
        env = f"HF_ENDPOINT={endpoint.rstrip('/')} HF_HUB_DISABLE_XET=1 "
    return f"{env}hf download {model} --local-dir {local_dir_for(model)}"


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(model: str) -> bool:
    """`owner/name` that is not an existing path: a Hub repo id."""
    return bool(_HUB_ID.match(model)) and not Path(model).expanduser().exists()


def check_local(folder: Path) -> str | None:
    """None if `folder` holds a transformers depth model with its image processor, else what is missing."""
    missing = [n for n in ("config.json", "preprocessor_config.json") if not (folder / n).is_file()]
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        missing.append("*.safetensors weights")
    if missing:
        return f"depth model folder {folder} lacks {', '.join(missing)}"
    cfg = json.loads((folder / "config.json").read_text())
    archs = " ".join(cfg.get("architectures") or [])
    if "DepthEstimation" not in archs and cfg.get("model_type") not in (
        "depth_anything",
        "dpt",
        "glpn",
        "zoedepth",
    ):
        return f"{folder}/config.json is a {cfg.get('model_type')!r} model, not a depth estimation model"
    return None


def _cached(model: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    names = ("config.json", "preprocessor_config.json", "model.safetensors")
    return all(isinstance(try_to_load_from_cache(model, n), str) for n in names)


def check_model(model: str, endpoint: str | None = None, explicit: bool = True) -> str | None:
    """Plan-time check: None when `model` is a usable local folder, a cached Hub id or reachable on `endpoint`.

    Otherwise the message to print, ending with the exact command that fetches it. `explicit` only changes the
    wording: the caller fails on it when depth was asked for, and skips depth with it when it was not.
    """
    from sgt_data import hub

    what = "depth was requested but" if explicit else "depth is skipped:"
    endpoint = hub.resolve_endpoint(endpoint)
    if not is_hub_id(model):
        path = Path(model).expanduser()
        problem = check_local(path) if path.is_dir() else f"no such folder {path}"
        hint = f"Pass --depth-model with a folder saved by `save_pretrained`, or a Hub id such as {DEFAULT_MODEL}"
        return None if problem is None else f"{what} {problem}.\n{hint}"
    how = (
        f"Fetch it with:\n  {fetch_command(model, endpoint)}\nthen pass --depth-model {local_dir_for(model)}"
    )
    if _cached(model):
        return None
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return f"{what} {model} is not in the local Hub cache and HF_HUB_OFFLINE is set.\n{how}"
    try:
        hub.api(endpoint, hub.get_token(endpoint=endpoint)).model_info(model, timeout=10)
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable now"; the reason is reported
        reason = hub.redact(f"{type(exc).__name__}: {exc}").splitlines()[0][:300]
        return f"{what} {model} is neither a local folder nor reachable on {endpoint} ({reason}).\n{how}"
    return None


# ---------------------------------------------------------------- preprocessing and postprocessing (numpy)


@dataclass(frozen=True)
class Prep:
    """The model's image-processor settings that matter for inference (read from its config)."""

    height: int = 518
    width: int = 518
    keep_aspect_ratio: bool = True
    multiple: int = 14
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    scale: float = 1 / 255

    @classmethod
    def from_processor(cls, proc: Any) -> Prep:
        size = proc.size
        get = size.get if isinstance(size, dict) else lambda k, d=None: getattr(size, k, d)
        height, width = get("height"), get("width")
        if height is None:  # shortest_edge style configs
            height = width = get("shortest_edge", 518)
        return cls(
            height=int(height),
            width=int(width),
            keep_aspect_ratio=bool(getattr(proc, "keep_aspect_ratio", False)),
            multiple=int(getattr(proc, "ensure_multiple_of", 1) or 1),
            mean=tuple(float(v) for v in proc.image_mean) if proc.do_normalize else (0.0, 0.0, 0.0),
            std=tuple(float(v) for v in proc.image_std) if proc.do_normalize else (1.0, 1.0, 1.0),
            scale=float(proc.rescale_factor) if proc.do_rescale else 1.0,
        )


def input_size(height: int, width: int, prep: Prep) -> tuple[int, int]:
    """(h, w) the processor would resize an image to: scale as little as possible, round to the multiple."""
    sh, sw = prep.height / height, prep.width / width
    if prep.keep_aspect_ratio:
        sh = sw = sw if abs(1 - sw) < abs(1 - sh) else sh
    m = prep.multiple
    return max(m, round(sh * height / m) * m), max(m, round(sw * width / m) * m)


def prepare_rgb(bgr: np.ndarray, prep: Prep, full: tuple[int, int] | None = None) -> np.ndarray:
    """BGR uint8 image -> RGB uint8 at the model's input size (area filter shrinking, bicubic enlarging).

    `full` = (h, w) of the original when `bgr` is a reduced decode: the input size follows the original."""
    h, w = input_size(*(full or bgr.shape[:2]), prep)
    shrink = h <= bgr.shape[0] and w <= bgr.shape[1]
    small = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return np.ascontiguousarray(small[:, :, ::-1])


def decode_for_model(data: bytes | dict | None, prep: Prep) -> tuple[np.ndarray, tuple[int, int]]:
    """(BGR pixels, (w, h) of the full image): JPEGs at least 2x the model's grid decode at 1/2, 1/4 or 1/8 scale,
    which libjpeg does in the DCT, 2-4x faster than a full decode followed by a resize."""
    if isinstance(data, dict):
        data = data.get("bytes")
    if not data or data[:2] != b"\xff\xd8":
        bgr = decode_image(data)
        return bgr, (int(bgr.shape[1]), int(bgr.shape[0]))
    width, height = header_size(data)
    ih, iw = input_size(height, width, prep)
    factor = next((f for f in (8, 4, 2) if height >= f * ih and width >= f * iw), 1)
    if factor == 1 or width * height > DEFAULT_MAX_PIXELS:
        return decode_image(data), (width, height)  # the full guards (bomb, truncation, size) apply
    check_complete(data)
    flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[
        factor
    ]
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise BadImage(
            f"cv2 cannot decode the JPEG ({len(data)} bytes, header {width}x{height}); file is corrupt"
        )
    return bgr, (width, height)


def output_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(w, h) of the PNG: the image's size, or scaled so its longer side is `max_side` when that is smaller."""
    if max_side and max(width, height) > max_side:
        s = max_side / max(width, height)
        return max(1, round(width * s)), max(1, round(height * s))
    return width, height


def encode_depth(norm: np.ndarray, size: tuple[int, int]) -> bytes:
    """Normalised [0, 1] float map -> 16-bit single-channel PNG bytes at `size` = (w, h) (numpy reference path;
    the step does the same resize and quantisation on its device, see `DepthTarget._forward`)."""
    resized = cv2.resize(norm, size, interpolation=cv2.INTER_LINEAR) if norm.shape[::-1] != size else norm
    return encode_png16(np.rint(np.clip(resized, 0.0, 1.0) * 65535.0).astype(np.uint16))


def encode_png16(q: np.ndarray) -> bytes:
    """uint16 HxW -> PNG bytes (cv2 default parameters: measured as fast as any filter/strategy choice)."""
    ok, buf = cv2.imencode(".png", q)
    if not ok:
        raise RuntimeError(f"cv2 could not PNG-encode a {q.shape} uint16 depth map")
    return buf.tobytes()


def decode_depth(png: bytes, depth_min: float, depth_max: float) -> np.ndarray:
    """Inverse of the convention: 16-bit PNG + raw range -> float32 relative inverse depth."""
    q = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    return (depth_min + q.astype(np.float32) / 65535.0 * (depth_max - depth_min)).astype(np.float32)


# ---------------------------------------------------------------- the step


def _to_uint16(t: Any) -> np.ndarray:
    """A float tensor of whole numbers in [0, 65535] -> uint16 numpy (cast on the device where torch can)."""
    import torch

    try:
        return t.to(torch.uint16).cpu().numpy()
    except (RuntimeError, TypeError):  # older torch builds lack uint16 kernels on some devices
        return t.to(torch.int32).cpu().numpy().astype(np.uint16)


def _gpus_in_cluster() -> float:
    """GPUs the running Ray cluster offers, else this machine's NVIDIA devices (no torch import)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return float(ray.cluster_resources().get("GPU", 0))
    torch = sys.modules.get("torch")
    if torch is not None:
        return float(torch.cuda.device_count())
    gpus = Path("/proc/driver/nvidia/gpus")
    return float(len(list(gpus.iterdir()))) if gpus.is_dir() else 0.0


class DepthTarget:
    """Step: image (or `_bgr`) -> `depth` 16-bit PNG, `depth_min`, `depth_max` (see the module docstring)."""

    actor = True  # always hosted by an actor pool: the model loads once per actor
    version = "1"
    outputs = ("depth", "depth_min", "depth_max")
    actor_inputs = ("key", "status", "error", "_depth_in", "_depth_size")
    actor_outputs = ("status", "error", "_depth_q", "depth_min", "depth_max")

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 16, dtype: str = "auto",
                 num_gpus: float = 1, concurrency: int | None = None, endpoint: str | None = None,
                 max_side: int | None = None, num_cpus: float = 1, actor_threads: int = 2):  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"depth batch_size must be >= 1, got {batch_size}")
        if dtype != "auto" and dtype not in _DTYPES:
            raise ValueError(f"depth dtype {dtype!r}: use auto, {', '.join(sorted(set(_DTYPES)))}")
        self.model, self.batch_size, self.dtype = model, int(batch_size), dtype
        self.requested_gpus, self.concurrency, self.endpoint = float(num_gpus or 0), concurrency, endpoint
        self.max_side, self.num_cpus, self.actor_threads = max_side, num_cpus, actor_threads
        self._net = self.prep = self._device = None

    @property
    def num_gpus(self) -> float:
        """GPUs per actor: as requested when the cluster has GPUs, 0 (a CPU actor) when it has none."""
        return self.requested_gpus if self.requested_gpus and _gpus_in_cluster() > 0 else 0.0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_net": None, "_device": None}  # ship the recipe, never a loaded model

    # -- heavy part
    def setup(self) -> None:
        """Load model + image-processor settings; CUDA when GPUs were requested and are visible."""
        import torch
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        cuda = self.requested_gpus > 0 and torch.cuda.is_available()
        name = _DTYPES.get(self.dtype) or ("bfloat16" if cuda else "float32")
        path = self._resolve()
        self.prep = Prep.from_processor(AutoImageProcessor.from_pretrained(path))
        net = AutoModelForDepthEstimation.from_pretrained(path, dtype=getattr(torch, name))
        self._device = torch.device("cuda" if cuda else "cpu")
        torch.backends.cudnn.benchmark = cuda  # fixed input shapes per image size: let cuDNN pick its kernels
        self._net = net.to(self._device).eval()

    def _resolve(self) -> str:
        """A local folder as is; a Hub id from the cache when there, else downloaded from the endpoint."""
        if not is_hub_id(self.model):
            return str(Path(self.model).expanduser())
        from huggingface_hub import snapshot_download

        from sgt_data import hub

        try:
            return snapshot_download(self.model, local_files_only=True)
        except Exception:  # noqa: BLE001 - not cached: fetch it (check_model already said it is reachable)
            return snapshot_download(self.model, endpoint=hub.resolve_endpoint(self.endpoint))

    def setup_prep(self) -> None:
        """Only the image-processor settings (cheap): what `prepare` needs on the CPU side."""
        from transformers import AutoImageProcessor

        self.prep = Prep.from_processor(AutoImageProcessor.from_pretrained(self._resolve()))

    # -- the three parts
    def prepare(self, batch: Batch) -> Batch:
        """CPU: `_depth_in` = RGB uint8 at the model's input size (from `_bgr` when present, else `image`), and
        `_depth_size` = (w, h) of the PNG to write."""
        if self.prep is None:
            self.setup_prep()
        prep = self.prep

        def row(b: Batch, i: int) -> dict[str, Any]:
            if "_bgr" in b and b["_bgr"][i] is not None:
                bgr = b["_bgr"][i]
                size = (int(bgr.shape[1]), int(bgr.shape[0]))
            else:
                bgr, size = decode_for_model(b["image"][i], prep)
            rgb = prepare_rgb(bgr, prep, full=size[::-1])
            return {"_depth_in": rgb, "_depth_size": output_size(*size, self.max_side)}

        return self._rows(batch, row, ("_depth_in", "_depth_size"))

    def infer(self, batch: Batch) -> Batch:
        """Accelerator: `_depth_in` -> `_depth_q` (uint16 map at `_depth_size`), `depth_min`, `depth_max`."""
        if self._net is None:
            self.setup()
        n = len(batch["key"])
        out: Batch = {"_depth_q": [None] * n, "depth_min": [None] * n, "depth_max": [None] * n}
        groups: dict[tuple, list[int]] = {}
        for i in range(n):
            if batch["status"][i] == "ok" and batch["_depth_in"][i] is not None:
                groups.setdefault(batch["_depth_in"][i].shape, []).append(i)
        for rows in groups.values():  # one forward per input shape: exact, no padding
            for k in range(0, len(rows), self.batch_size):
                part = rows[k : k + self.batch_size]
                rgb = np.stack([batch["_depth_in"][i] for i in part])
                maps, lo, hi = self._forward(rgb, [batch["_depth_size"][i] for i in part])
                for j, i in enumerate(part):
                    out["_depth_q"][i], out["depth_min"][i], out["depth_max"][i] = maps[j], lo[j], hi[j]

        def check(b: Batch, i: int) -> dict[str, Any]:
            if not (np.isfinite(b["depth_min"][i]) and np.isfinite(b["depth_max"][i])):
                raise BadDepth(f"row {b['key'][i]}: the depth model {self.model} gave a non-finite depth map")
            return {}

        return map_ok_rows({**batch, **out}, check, ())

    def _forward(
        self, rgb: np.ndarray, sizes: list[tuple[int, int]]
    ) -> tuple[list, list[float], list[float]]:
        """Normalise, forward, per-image min-max, then resize to each (w, h) and quantise, all on the device:
        the CPUs only PNG-encode (bilinear upsampling = cv2 INTER_LINEAR's half-pixel grid)."""
        import torch
        import torch.nn.functional as F

        net, dev = self._net, self._device
        x = torch.from_numpy(rgb).to(dev, non_blocking=True).permute(0, 3, 1, 2).float()
        mean = torch.tensor(self.prep.mean, device=dev).view(1, 3, 1, 1)
        std = torch.tensor(self.prep.std, device=dev).view(1, 3, 1, 1)
        x = ((x * self.prep.scale - mean) / std).to(net.dtype)
        with torch.inference_mode():
            pred = net(pixel_values=x).predicted_depth.float()
            lo, hi = pred.amin(dim=(1, 2)), pred.amax(dim=(1, 2))
            span = (hi - lo).view(-1, 1, 1)
            norm = torch.where(span > 0, (pred - lo.view(-1, 1, 1)) / span.clamp_min(1e-12), 0.0)
            maps = []
            for j, (w, h) in enumerate(sizes):
                m = norm[j][None, None]
                if m.shape[-2:] != (h, w):
                    shrink = h < m.shape[-2] or w < m.shape[-1]
                    m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
                maps.append(_to_uint16((m[0, 0].clamp(0, 1) * 65535.0).round()))
        return maps, lo.tolist(), hi.tolist()

    def finish(self, batch: Batch) -> Batch:
        """CPU: `_depth_q` -> `depth` 16-bit PNG; the raw range as float32 values."""

        def row(b: Batch, i: int) -> dict[str, Any]:
            return {"depth": encode_png16(b["_depth_q"][i]),
                    "depth_min": float(np.float32(b["depth_min"][i])),
                    "depth_max": float(np.float32(b["depth_max"][i]))}  # fmt: skip

        return self._rows(batch, row, self.outputs)

    def _rows(self, batch: Batch, fn, outputs: tuple[str, ...]) -> Batch:
        """`map_ok_rows`, with the rows computed on `num_cpus` threads (cv2 releases the GIL)."""
        threads = max(1, int(self.num_cpus))
        if threads == 1 or len(batch["key"]) < 2:
            return map_ok_rows(batch, fn, outputs)
        ok = [i for i, s in enumerate(batch.get("status") or ["ok"] * len(batch["key"])) if s == "ok"]

        def attempt(i: int) -> Any:
            try:
                return fn(batch, i)
            except SampleError as exc:
                return exc

        with ThreadPoolExecutor(threads) as pool:
            done = dict(zip(ok, pool.map(attempt, ok)))

        def replay(b: Batch, i: int) -> dict[str, Any]:
            if isinstance(done[i], SampleError):
                raise done[i]
            return done[i]

        return map_ok_rows(batch, replay, outputs)

    def __call__(self, batch: Batch) -> Batch:
        """All three parts in one place (a pool that only knows `step(batch)` runs this in its actor)."""
        return self.finish(self.infer(self.prepare(batch)))


def save_random_model(folder: str | Path, arch: str = "tiny", seed: int = 0) -> Path:
    """Save a random-init Depth-Anything model + DPT image processor to `folder` (tests, benchmarks, offline runs).

    `arch="small"` matches Depth-Anything-V2-Small (ViT-S/14 DINOv2, 518 px, 24.8M parameters); `"tiny"` is the
    ~0.6M-parameter config that runs in milliseconds on a CPU (input 56 px).
    """
    import torch
    from transformers import (
        DepthAnythingConfig,
        DepthAnythingForDepthEstimation,
        Dinov2Config,
        DPTImageProcessor,
    )

    small = arch == "small"
    if arch not in ("tiny", "small"):
        raise ValueError(f"arch must be tiny or small, got {arch!r}")
    dims = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536)
    if not small:
        dims = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128)
    stages = [3, 6, 9, 12] if small else [1, 2, 3, 4]
    backbone = Dinov2Config(**dims, patch_size=14, image_size=518 if small else 56, reshape_hidden_states=False,
                            out_indices=stages, out_features=[f"stage{i}" for i in stages])  # fmt: skip
    head = dict(reassemble_hidden_size=384, neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64,
                head_hidden_size=32) if small else dict(reassemble_hidden_size=64, neck_hidden_sizes=[16, 32, 64, 64],
                fusion_hidden_size=32, head_hidden_size=16)  # fmt: skip
    config = DepthAnythingConfig(
        backbone_config=backbone, patch_size=14, depth_estimation_type="relative", **head
    )
    torch.manual_seed(seed)
    side = 518 if small else 56
    out = Path(folder)
    net = DepthAnythingForDepthEstimation(config).eval()
    _calibrate_head(net, side)
    net.save_pretrained(out)
    DPTImageProcessor(size={"height": side, "width": side}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      resample=3, do_pad=False, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(out)  # fmt: skip
    return out


def _calibrate_head(net: Any, side: int) -> None:
    """Scale the last conv of a random model so a random image maps to about 1 +- 0.25, not ReLU(~1e-5) = 0."""
    import torch

    conv, seen = net.head.conv3, {}
    hook = conv.register_forward_hook(lambda _m, _i, o: seen.setdefault("out", o))
    with torch.no_grad():
        net(pixel_values=torch.randn(1, 3, side, side))
        hook.remove()
        raw = seen["out"] - conv.bias.view(1, -1, 1, 1)
        k = 0.25 / float(raw.std().clamp_min(1e-20))
        conv.weight.mul_(k)
        conv.bias.fill_(1.0 - k * float(raw.mean()))
