"""Images for CLIP-style image towers, in numpy + Pillow (imported only when an image is actually used).

:func:`preprocess` reproduces transformers' CLIPImageProcessor (PIL backend) step by step, with the parameters
st-export recorded in the manifest: convert to RGB (compositing transparency onto white), resize the shortest
edge (or to a fixed size) with Pillow's filter, center crop (zero-padding images smaller than the crop),
rescale (float64 multiply, then float32) and normalize with the processor's mean and std in float32.

:func:`st_runtime.inputs.classify` decides, per input of ``encode``, whether it is text or an image, as
sentence-transformers 6 does for a model with an image modality: a PIL image, a 3-D numpy array (H, W, C)
or (C, H, W), an existing local file whose name ends in an image extension, or a ``data:image/...;base64,``
URI is an image; any other string (or [text, pair]) is text; the helpers it uses live here.
"""

from __future__ import annotations

import base64
import io
import os
import sys
from collections.abc import Mapping
from math import ceil
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UnsupportedInputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tiff", ".webp")

TEXT = "text"
IMAGE = "image"


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError as exc:
        raise UnsupportedInputError(
            "encoding images needs Pillow, which is not installed: pip install 'st-runtime[image]'"
        ) from exc
    return Image, ImageOps


def is_pil_image(obj: Any) -> bool:
    mod = sys.modules.get("PIL.Image")  # an image object can only exist if PIL was imported already
    return mod is not None and isinstance(obj, mod.Image)


def is_image_path(text: str) -> bool:
    """sentence-transformers 6's rule: an existing file with an image extension, or a data:image URI."""
    if text.startswith("data:image/"):
        return True
    return text.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(text)


def is_image_url(text: str) -> bool:
    if not (text.startswith(("http://", "https://")) and " " not in text):
        return False
    return text.split("?", 1)[0].split("#", 1)[0].lower().endswith(IMAGE_EXTENSIONS)


# ---------------------------------------------------------------- loading
def to_rgb_pil(item: Any):
    """The RGB PIL image the processor would see for ``item`` (path, data URI, PIL image or uint8 array)."""
    Image, ImageOps = _pil()
    if isinstance(item, str):
        # transformers.image_utils.load_image: open, apply EXIF orientation, convert("RGB") (alpha is dropped).
        if item.startswith("data:image/"):
            try:
                img = Image.open(io.BytesIO(base64.decodebytes(item.split(",", 1)[1].encode())))
            except Exception as exc:  # Pillow raises several untyped errors for bad data
                raise UnsupportedInputError(f"could not decode the data:image URI ({exc}).") from exc
        else:
            try:
                img = Image.open(Path(item))
            except Exception as exc:  # UnidentifiedImageError, OSError, ...
                raise UnsupportedInputError(f"could not read the image file {item!r}: {exc}") from exc
        img = ImageOps.exif_transpose(img)
        return img.convert("RGB")
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise UnsupportedInputError(
                f"image arrays must be uint8 (values 0..255), got {item.dtype}; convert with "
                "(array * 255).round().astype(np.uint8) or pass a PIL image."
            )
        # transformers infers channels-first when the first axis has 1, 3 or 4 entries, else channels-last.
        if item.shape[0] in (1, 3, 4):
            item = np.moveaxis(item, 0, -1)
        if item.shape[-1] not in (1, 3, 4):
            raise UnsupportedInputError(f"image array of shape {item.shape} has no 1-, 3- or 4-channel axis.")
        if item.shape[-1] == 1:
            item = np.repeat(item, 3, axis=-1)
        mode = "RGBA" if item.shape[-1] == 4 else "RGB"
        item = Image.fromarray(np.ascontiguousarray(item), mode)
    # transformers.image_transforms.convert_to_rgb: composite transparency onto white.
    has_alpha = "A" in item.getbands() or item.info.get("transparency") is not None
    if has_alpha:
        rgba = item.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return item.convert("RGB")


# ---------------------------------------------------------------- CLIPImageProcessor
def _resize_target(height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
    if "shortest_edge" in size:
        s = int(size["shortest_edge"])
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = s, int(s * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    return int(size["height"]), int(size["width"])


def _center_crop(chw: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    h, w = chw.shape[-2:]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    bottom, right = top + crop_h, left + crop_w
    if top >= 0 and bottom <= h and left >= 0 and right <= w:
        return chw[..., top:bottom, left:right]
    new_h, new_w = max(crop_h, h), max(crop_w, w)
    padded = np.zeros((*chw.shape[:-2], new_h, new_w), dtype=chw.dtype)
    top_pad, left_pad = ceil((new_h - h) / 2), ceil((new_w - w) / 2)
    padded[..., top_pad : top_pad + h, left_pad : left_pad + w] = chw
    top, bottom, left, right = top + top_pad, bottom + top_pad, left + left_pad, right + left_pad
    return padded[..., max(0, top) : min(new_h, bottom), max(0, left) : min(new_w, right)]


def preprocess_one(item: Any, cfg: dict[str, Any]) -> np.ndarray:
    """float32 [3, H, W] pixel values of one image, as CLIPImageProcessor gives them."""
    img = to_rgb_pil(item) if cfg.get("do_convert_rgb", True) or not is_pil_image(item) else item
    if cfg.get("do_resize"):
        h, w = _resize_target(img.height, img.width, cfg["size"])
        img = img.resize((w, h), resample=int(cfg["resample"]))
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    chw = np.moveaxis(arr, -1, 0)
    if cfg.get("do_center_crop"):
        chw = _center_crop(chw, int(cfg["crop_size"]["height"]), int(cfg["crop_size"]["width"]))
    if cfg.get("do_rescale"):
        chw = (chw.astype(np.float64) * float(cfg["rescale_factor"])).astype(np.float32)
    if cfg.get("do_normalize"):
        if not np.issubdtype(chw.dtype, np.floating):
            chw = chw.astype(np.float32)
        mean = np.asarray(cfg["image_mean"], dtype=chw.dtype)
        std = np.asarray(cfg["image_std"], dtype=chw.dtype)
        chw = ((chw.T - mean) / std).T
    return np.ascontiguousarray(chw, dtype=np.float32)


def preprocess(items: list, cfg: dict[str, Any]) -> np.ndarray:
    """float32 [n, 3, H, W] pixel_values for a list of images."""
    return (
        np.stack([preprocess_one(it, cfg) for it in items])
        if items
        else np.zeros((0, 3, *cfg["image_size"]), dtype=np.float32)
    )


class ImageTower:
    """Image preprocessing + the image graph of one tower."""

    def __init__(self, tower: Mapping[str, Any], session):
        self.spec = tower
        self.preprocessor = dict(tower["preprocessor"])
        if self.preprocessor.get("kind") != "clip":
            from .errors import GraphLoadError

            raise GraphLoadError(
                f"image preprocessor kind {self.preprocessor.get('kind')!r} is unknown to this "
                "st-runtime (it knows 'clip'). Upgrade st-runtime."
            )
        self.session = session
        self.input = tower["inputs"][0]
        self.output = tower["output"]

    def embed(self, items: list, batch_size: int | None, out: np.ndarray) -> None:
        batch_size = batch_size or 32
        for start in range(0, len(items), batch_size):
            pixels = preprocess(items[start : start + batch_size], self.preprocessor)
            out[start : start + len(pixels)] = self.session.run([self.output], {self.input: pixels})[0]
