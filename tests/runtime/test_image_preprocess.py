"""st_runtime.image (numpy + Pillow) against transformers' CLIPImageProcessor on the same images."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PIL")
transformers = pytest.importorskip("transformers")

from st_runtime import image as rt_image  # noqa: E402
from st_runtime.inputs import classify  # noqa: E402

CONFIGS = {
    "openai-clip-224": dict(),  # the processor's defaults: shortest_edge 224, crop 224, bicubic, OpenAI mean/std
    "tiny-32": dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    "fixed-size-bilinear": dict(size={"height": 40, "width": 56}, crop_size={"height": 30, "width": 30}, resample=2),
    "odd-crop-no-normalize": dict(
        size={"shortest_edge": 37}, crop_size={"height": 33, "width": 35}, do_normalize=False
    ),
    "no-resize": dict(do_resize=False, crop_size={"height": 24, "width": 24}),
}


def _images():
    from PIL import Image

    rng = np.random.RandomState(3)
    out = {
        "landscape": Image.fromarray(rng.randint(0, 256, (60, 90, 3), dtype=np.uint8)),
        "portrait": Image.fromarray(rng.randint(0, 256, (301, 123, 3), dtype=np.uint8)),
        "tiny": Image.fromarray(rng.randint(0, 256, (5, 7, 3), dtype=np.uint8)),
        "gray": Image.fromarray(rng.randint(0, 256, (50, 64), dtype=np.uint8), "L"),
        "rgba": Image.fromarray(rng.randint(0, 256, (40, 52, 4), dtype=np.uint8), "RGBA"),
        "palette": Image.fromarray(rng.randint(0, 256, (33, 47, 3), dtype=np.uint8)).convert("P"),
    }
    trans = Image.fromarray(rng.randint(0, 256, (20, 30), dtype=np.uint8), "L")
    trans.info["transparency"] = 7
    out["gray-with-transparency"] = trans
    return out


def _processor(cfg):
    return transformers.CLIPImageProcessorPil(**cfg)


def _manifest_cfg(ip) -> dict:
    saved = ip.to_dict()
    from exporters.towers import IMAGE_KEYS  # what st-export records from the processor

    cfg = {k: saved.get(k) for k in IMAGE_KEYS}
    cfg["size"] = {k: v for k, v in (cfg["size"] or {}).items() if v is not None}
    cfg["crop_size"] = {k: v for k, v in (cfg["crop_size"] or {}).items() if v is not None}
    cfg["image_size"] = [cfg["crop_size"]["height"], cfg["crop_size"]["width"]]
    return cfg


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pixels_match_clip_image_processor(name):
    ip = _processor(CONFIGS[name])
    cfg = _manifest_cfg(ip)
    for label, img in _images().items():
        ref = ip([img], return_tensors="np")["pixel_values"]
        got = rt_image.preprocess([img], cfg)
        assert got.shape == ref.shape and got.dtype == np.float32, (label, got.shape, ref.shape)
        assert np.abs(got - ref).max() <= 1e-5, (label, np.abs(got - ref).max())


def test_arrays_and_files_match_clip_image_processor(tmp_path):
    from PIL import Image
    from transformers.image_utils import load_image

    ip = _processor(CONFIGS["tiny-32"])
    cfg = _manifest_cfg(ip)
    imgs = _images()
    arr = np.asarray(imgs["landscape"])
    for a in (arr, np.moveaxis(arr, -1, 0)):
        ref = ip([a], return_tensors="np")["pixel_values"]
        assert np.abs(rt_image.preprocess([a], cfg) - ref).max() <= 1e-5
    # Files go through transformers' load_image (EXIF orientation, convert("RGB")), as sentence-transformers does.
    exif_img = imgs["portrait"]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    exif_path = tmp_path / "rotated.jpg"
    exif_img.save(exif_path, exif=exif, quality=95)
    rgba_path = tmp_path / "alpha.png"
    imgs["rgba"].save(rgba_path)
    for path in (exif_path, rgba_path):
        ref = ip([load_image(str(path))], return_tensors="np")["pixel_values"]
        got = rt_image.preprocess([str(path)], cfg)
        assert np.abs(got - ref).max() <= 1e-5, path
    # The EXIF rotation is really applied (the check could fail): portrait 301x123 becomes landscape.
    assert rt_image.to_rgb_pil(str(exif_path)).size == (301, 123)


def test_classify_follows_sentence_transformers_rules(tmp_path):
    from PIL import Image

    p = tmp_path / "x.PNG"
    Image.new("RGB", (4, 4)).save(p, format="PNG")
    _items, kinds, singular = classify(
        images=True,
        sentences=[
            "text",
            str(p),
            str(tmp_path / "missing.png"),
            ("a", "b"),
            Image.new("RGB", (2, 2)),
            np.zeros((4, 4, 3), np.uint8),
        ],
    )
    assert kinds == ["text", "image", "text", "text", "image", "image"] and not singular
    assert classify(Image.new("RGB", (2, 2)), images=True)[2] is True
    assert classify(np.zeros((4, 4, 3), np.uint8), images=True)[2] is True


def test_data_uri_is_an_image_and_bad_inputs_are_typed(tmp_path):
    import base64
    import io

    from st_runtime.errors import UnsupportedInputError

    img = _images()["landscape"]
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    cfg = _manifest_cfg(_processor(CONFIGS["tiny-32"]))
    assert classify([uri], images=True)[1] == ["image"]
    np.testing.assert_array_equal(rt_image.preprocess([uri], cfg), rt_image.preprocess([img], cfg))
    with pytest.raises(UnsupportedInputError, match="data:image"):
        rt_image.preprocess(["data:image/png;base64,bm90IGFuIGltYWdl"], cfg)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UnsupportedInputError, match="could not read the image file"):
        rt_image.preprocess([str(bad)], cfg)
    with pytest.raises(UnsupportedInputError, match="uint8"):
        rt_image.preprocess([np.zeros((4, 4, 3), np.float64)], cfg)
    with pytest.raises(UnsupportedInputError, match="channel"):
        rt_image.preprocess([np.zeros((5, 5, 7), np.uint8)], cfg)
