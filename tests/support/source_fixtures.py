"""Small, real-looking datasets written to disk for tests: COCO, LVIS and Open Images formats.

Each function writes real photos (scikit-image's bundled ones, downscaled, saved as JPEG) plus
annotation files into `root` and returns the SourceConfig that reads them. Object shapes are
hand-placed around real things in the photos (the cat's eyes and nose, the coffee cup and spoon,
the astronaut's face and badge, the rocket, the camera, coins), mostly 1 %-40 % of the image, so
the candidate stage keeps them. Everything is deterministic (same bytes on every call) and fast.

    make_coco_source(root, name="gen_coco", n_images=6, corrupt=False)
    make_lvis_source(root, name="gen_lvis")
    make_openimages_source(root, name="gen_oi", corrupt=False)

Not pytest fixtures on purpose: the session conftest, e2e tests and benchmarks call them directly.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pbi_ml.config import SourceConfig

MAX_SIDE = 256  # photos are downscaled to this longest side: keeps end-to-end tests quick

# --------------------------------------------------------------------------------------------
# the photos and the objects in them (coordinates as fractions of width / height)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20) -> list[tuple[float, float]]:
    return [(cx + rx * math.cos(2 * math.pi * k / n), cy + ry * math.sin(2 * math.pi * k / n)) for k in range(n)]


# photo -> list of (key, coco category, [polygons], encoding, iscrowd)
# encoding: "polygon" (COCO polygons), "rle" (compressed counts string), "rle_list" (uncompressed counts)
PHOTO_OBJECTS: dict[str, list[tuple[str, str, list[list[tuple[float, float]]], str, bool]]] = {
    "chelsea": [
        ("left_eye", "eye", [_ellipse(0.385, 0.39, 0.085, 0.105)], "polygon", False),
        ("right_eye", "eye", [_ellipse(0.705, 0.45, 0.065, 0.085, 16)], "polygon", False),
        (
            "nose",
            "nose",
            [[(0.50, 0.73), (0.57, 0.71), (0.64, 0.73), (0.63, 0.79), (0.58, 0.87), (0.54, 0.82)]],
            "polygon",
            False,
        ),
    ],
    "coffee": [
        # a multi-polygon instance: the cup's body and its handle
        (
            "cup",
            "cup",
            [
                _ellipse(0.49, 0.30, 0.195, 0.25, 24),
                [(0.33, 0.58), (0.40, 0.58), (0.41, 0.66), (0.40, 0.75), (0.35, 0.77), (0.32, 0.70)],
            ],
            "polygon",
            False,
        ),
        (
            "spoon",
            "spoon",
            [
                _ellipse(0.61, 0.71, 0.065, 0.095, 16),
                [(0.60, 0.62), (0.63, 0.62), (0.69, 0.18), (0.67, 0.17)],
            ],
            "rle",
            False,
        ),
    ],
    "astronaut": [
        ("face", "face", [_ellipse(0.44, 0.27, 0.085, 0.12)], "polygon", False),
        ("badge", "badge", [_ellipse(0.335, 0.755, 0.075, 0.075, 24)], "rle_list", False),
        (
            "shuttle",
            "rocket",
            [
                [
                    (0.79, 0.04),
                    (0.83, 0.03),
                    (0.86, 0.10),
                    (0.86, 0.40),
                    (0.90, 0.50),
                    (0.90, 0.56),
                    (0.73, 0.56),
                    (0.75, 0.47),
                    (0.78, 0.40),
                    (0.78, 0.10),
                ]
            ],
            "polygon",
            False,
        ),
        ("flag", "flag", [[(0.0, 0.0), (0.17, 0.0), (0.19, 0.40), (0.15, 0.70), (0.0, 0.72)]], "rle_list", True),
    ],
    "rocket": [
        (
            "rocket",
            "rocket",
            [[(0.485, 0.33), (0.50, 0.30), (0.515, 0.30), (0.53, 0.33), (0.53, 0.95), (0.485, 0.95)]],
            "polygon",
            False,
        ),
        ("light", "lamp", [_ellipse(0.235, 0.885, 0.012, 0.018, 8)], "polygon", False),
    ],
    "camera": [
        (
            "camera",
            "camera",
            [[(0.50, 0.28), (0.63, 0.27), (0.64, 0.33), (0.60, 0.37), (0.51, 0.36)]],
            "polygon",
            False,
        ),
        ("head", "head", [_ellipse(0.41, 0.25, 0.09, 0.13)], "polygon", False),
    ],
    "coins": [
        ("coin_a", "coin", [_ellipse(0.11, 0.16, 0.058, 0.073)], "polygon", False),
        ("coin_b", "coin", [_ellipse(0.265, 0.17, 0.058, 0.073)], "rle", False),
        ("coin_c", "coin", [_ellipse(0.41, 0.16, 0.058, 0.073)], "polygon", False),
    ],
}
PHOTOS = tuple(PHOTO_OBJECTS)


def photo(name: str, mirrored: bool = False, max_side: int = MAX_SIDE) -> np.ndarray:
    """A scikit-image photo, downscaled so its longest side is `max_side` (uint8, RGB or gray)."""
    import skimage.data

    array = getattr(skimage.data, name)()
    image = Image.fromarray(array)
    scale = max_side / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    if mirrored:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(image)


def _jpeg_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _absolute(polygon, width: int, height: int, mirrored: bool) -> list[float]:
    coords = []
    for x, y in polygon:
        x = 1.0 - x if mirrored else x
        coords += [round(x * width, 2), round(y * height, 2)]
    return coords


def _raster(polygons: list[list[float]], width: int, height: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for coords in polygons:
        draw.polygon(coords, fill=255)
    return np.asarray(canvas) > 0


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F").astype(np.int8)  # COCO RLE runs go down the columns
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0] + runs  # runs start with a (possibly empty) run of zeros
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def _compressed_rle(mask: np.ndarray) -> dict:
    import pycocotools.mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _segmentation(polygons, encoding: str, width: int, height: int, mirrored: bool):
    absolute = [_absolute(p, width, height, mirrored) for p in polygons]
    if encoding == "polygon":
        return absolute
    mask = _raster(absolute, width, height)
    return _uncompressed_rle(mask) if encoding == "rle_list" else _compressed_rle(mask)


def _bbox_area(segmentation, width: int, height: int) -> tuple[list[float], float]:
    """What a COCO file states for bbox / area (the readers recompute them; kept for realism)."""
    import pycocotools.mask as mask_utils

    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation["counts"], list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
    return [round(float(v), 2) for v in mask_utils.toBbox(rle)], float(mask_utils.area(rle))


# --------------------------------------------------------------------------------------------
# COCO


def make_coco_source(root, name: str = "gen_coco", n_images: int = 6, corrupt: bool = False) -> SourceConfig:
    """A COCO instances dataset: `root/images/*.jpg` + `root/annotations.json`.

    Holds polygons, a multi-polygon instance (the cup and its handle), compressed RLE (spoon,
    coin), uncompressed RLE (badge) and a crowd region (flag, uncompressed RLE). Photos are used in
    the order of PHOTOS; past six they repeat mirrored. With `corrupt=True` it also has: an image
    file of garbage bytes, an annotation whose image file is missing, a degenerate polygon (2
    points), a zero-area polygon (collinear points), an empty segmentation, an instance with one
    valid and one 2-point polygon, and an image whose file_name is "../../x.jpg".
    """
    root = Path(root)
    images_dir = root / "images"
    category_names: list[str] = []
    images, annotations = [], []

    def category_id(category: str) -> int:
        if category not in category_names:
            category_names.append(category)
        return category_names.index(category) + 1

    def add_annotation(image_id: int, category: str, segmentation, width: int, height: int, iscrowd: bool = False):
        try:
            bbox, area = _bbox_area(segmentation, width, height)
        except Exception:  # degenerate shapes: state what a careless tool would
            bbox, area = [0.0, 0.0, 0.0, 0.0], 0.0
        annotations.append(
            {
                "id": 1000 + len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_id(category),
                "segmentation": segmentation,
                "area": area,
                "bbox": bbox,
                "iscrowd": int(iscrowd),
            }
        )

    for i in range(n_images):
        photo_name = PHOTOS[i % len(PHOTOS)]
        mirrored = i >= len(PHOTOS)
        pixels = photo(photo_name, mirrored)
        height, width = pixels.shape[:2]
        image_id = i + 1
        file_name = f"{image_id:012d}.jpg"
        _write(images_dir / file_name, _jpeg_bytes(pixels))
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": width,
                "height": height,
                "license": 1,
                "coco_url": f"http://images.cocodataset.org/train2017/{file_name}",
            }
        )
        for _key, category, polygons, encoding, iscrowd in PHOTO_OBJECTS[photo_name]:
            segmentation = _segmentation(polygons, encoding, width, height, mirrored)
            add_annotation(image_id, category, segmentation, width, height, iscrowd)

    if corrupt:
        first = images[0]
        w, h = first["width"], first["height"]
        add_annotation(first["id"], "eye", [[10.0, 10.0, 20.0, 20.0]], w, h)  # 2 points: degenerate
        add_annotation(first["id"], "eye", [[10.0, 10.0, 30.0, 10.0, 50.0, 10.0]], w, h)  # collinear: zero area
        add_annotation(first["id"], "eye", [], w, h)  # empty segmentation
        valid = _absolute(_ellipse(0.5, 0.5, 0.1, 0.1), w, h, False)
        add_annotation(first["id"], "nose", [valid, [1.0, 1.0, 3.0, 3.0]], w, h)  # one polygon dropped
        extra = [
            (901, "broken.jpg", b"\xff\xd8\xff\xe0 this is not really a JPEG " * 20),
            (902, "missing.jpg", None),
            (903, "../../x.jpg", None),
        ]
        for image_id, file_name, data in extra:
            if data is not None:
                _write(images_dir / file_name, data)
            images.append({"id": image_id, "file_name": file_name, "width": 200, "height": 150, "license": 1})
            add_annotation(image_id, "cup", [_absolute(_ellipse(0.5, 0.5, 0.2, 0.2), 200, 150, False)], 200, 150)

    document = {
        "info": {"description": f"{name}: generated test dataset (scikit-image photos)", "version": "1.0"},
        "licenses": [{"id": 1, "name": "scikit-image data licence", "url": "https://scikit-image.org"}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "object"} for k, n in enumerate(category_names)],
    }
    annotations_path = root / "annotations.json"
    _write(annotations_path, json.dumps(document).encode())
    return SourceConfig(name=name, format="coco", images=str(images_dir), annotations=str(annotations_path))


# --------------------------------------------------------------------------------------------
# LVIS

LVIS_CATEGORIES = [
    # id, LVIS name, frequency, synonyms
    (1, "baseball_bat", "f", ["baseball_bat"]),  # only in neg_category_ids
    (2, "cup", "f", ["cup"]),
    (3, "spoon", "f", ["spoon"]),
    (4, "badge", "c", ["badge"]),
    (5, "space_shuttle", "r", ["space_shuttle"]),
    (6, "camcorder", "c", ["camcorder", "video_camera"]),
    (7, "human_face", "f", ["human_face", "face"]),
    (8, "cat", "f", ["cat"]),
]
_LVIS_OBJECTS = {  # photo -> [(object key in PHOTO_OBJECTS, LVIS category id)]
    "coffee": [("cup", 2), ("spoon", 3)],
    "astronaut": [("face", 7), ("badge", 4), ("shuttle", 5)],
    "camera": [("camera", 6), ("head", 7)],
    "chelsea": [("left_eye", 8)],
    "rocket": [("rocket", 5)],
}


def make_lvis_source(root, name: str = "gen_lvis") -> SourceConfig:
    """An LVIS v1 dataset on a COCO-style image root (`root/coco/{train2017,val2017}/`).

    Categories carry `frequency` and `synonyms` with LVIS names ("space_shuttle", "human_face");
    images carry `neg_category_ids` and `not_exhaustive_category_ids` (the spoon in the coffee
    photo is not exhaustively annotated). The astronaut image has only a `coco_url` (as in real
    LVIS v1 files); the others also have `file_name`. Two annotated images (chelsea, rocket) are
    NOT on disk, as when LVIS is used with an incomplete COCO download. All masks are polygons.
    """
    root = Path(root)
    images_root = root / "coco"
    plan = [  # (photo, image id, folder, on disk, coco_url only)
        ("coffee", 397133, "val2017", True, False),
        ("astronaut", 285, "val2017", True, True),
        ("camera", 139, "train2017", True, False),
        ("chelsea", 632, "val2017", False, False),
        ("rocket", 724, "train2017", False, False),
    ]
    images, annotations = [], []
    for photo_name, image_id, folder, on_disk, url_only in plan:
        pixels = photo(photo_name)
        height, width = pixels.shape[:2]
        file_name = f"{folder}/{image_id:012d}.jpg"
        if on_disk:
            _write(images_root / file_name, _jpeg_bytes(pixels))
        objects = dict((key, cat) for key, cat in _LVIS_OBJECTS[photo_name])
        image = {
            "id": image_id,
            "width": width,
            "height": height,
            "license": 1,
            "coco_url": f"http://images.cocodataset.org/{file_name}",
            "flickr_url": f"http://farm1.staticflickr.com/1/{image_id}_z.jpg",
            "neg_category_ids": [1],
            "not_exhaustive_category_ids": [3] if photo_name == "coffee" else [],
        }
        if not url_only:
            image["file_name"] = file_name
        images.append(image)
        for key, _category, polygons, _encoding, _crowd in PHOTO_OBJECTS[photo_name]:
            if key not in objects:
                continue
            segmentation = [_absolute(p, width, height, False) for p in polygons]
            bbox, area = _bbox_area(segmentation, width, height)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": objects[key],
                    "segmentation": segmentation,
                    "area": area,
                    "bbox": bbox,
                }
            )
    counts = {cid: sum(a["category_id"] == cid for a in annotations) for cid, *_ in LVIS_CATEGORIES}
    categories = [
        {
            "id": cid,
            "name": lvis_name,
            "frequency": freq,
            "synonyms": synonyms,
            "synset": f"{lvis_name}.n.01",
            "def": f"a {lvis_name.replace('_', ' ')}",
            "image_count": int(counts[cid] > 0),
            "instance_count": counts[cid],
        }
        for cid, lvis_name, freq, synonyms in LVIS_CATEGORIES
    ]
    document = {
        "info": {"description": f"{name}: generated LVIS-format test dataset"},
        "licenses": [],
        "categories": categories,
        "annotations": annotations,
        "images": images,
    }
    annotations_path = root / "lvis_v1_val.json"
    _write(annotations_path, json.dumps(document).encode())
    return SourceConfig(name=name, format="lvis", images=str(images_root), annotations=str(annotations_path))


# --------------------------------------------------------------------------------------------
# Open Images

OPENIMAGES_CLASSES = [
    ("/m/02p5f1q", "Coffee cup"),
    ("/m/0cmx8", "Spoon"),
    ("/m/0dzct", "Human face"),
    ("/m/09rvcxw", "Rocket"),
    ("/m/0dv5r", "Camera"),
    ("/m/04hgtk", "Human head"),
    ("/m/0242l", "Coin"),
    ("/m/03120", "Flag"),
    ("/m/01yrx", "Cat"),
]
_OI_OBJECTS = {  # photo -> [(object key in PHOTO_OBJECTS, LabelName)]
    "coffee": [("cup", "/m/02p5f1q"), ("spoon", "/m/0cmx8")],
    "astronaut": [("face", "/m/0dzct"), ("shuttle", "/m/09rvcxw")],
    "rocket": [("rocket", "/m/09rvcxw")],
    "camera": [("camera", "/m/0dv5r"), ("head", "/m/04hgtk")],
    "coins": [("coin_a", "/m/0242l"), ("coin_c", "/m/0242l")],
}
OPENIMAGES_CSV_COLUMNS = [
    "MaskPath",
    "ImageID",
    "LabelName",
    "BoxID",
    "BoxXMin",
    "BoxXMax",
    "BoxYMin",
    "BoxYMax",
    "PredictedIoU",
    "Clicks",
]


def _hex(text: str, n: int) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()[:n]


def _png_bytes(mask: np.ndarray, mode: str) -> bytes:
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    if mode == "1":
        image = image.convert("1")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def make_openimages_source(root, name: str = "gen_oi", corrupt: bool = False) -> SourceConfig:
    """An Open Images v7 segmentation dataset: `root/images/<ImageID>.jpg`, mask PNGs under
    `root/masks/`, `root/validation-annotations-object-segmentation.csv` and
    `root/oidv7-class-descriptions.csv` (with header).

    Masks alternate between the flat layout and a sub-folder named by the mask name's first
    character (as the official zips extract), between PNG modes "L" and "1", and every other mask
    is stored at half the photo's resolution. With `corrupt=True` the CSV also has a row whose mask
    file is missing, one whose mask file is garbage, one with an all-black mask, and one whose
    image is not on disk (its size then comes from the mask).
    """
    root = Path(root)
    images_dir, masks_dir = root / "images", root / "masks"
    rows = []
    mask_counter = 0
    for photo_name, objects in _OI_OBJECTS.items():
        pixels = photo(photo_name)
        height, width = pixels.shape[:2]
        image_id = _hex(f"oi/{photo_name}", 16)
        _write(images_dir / f"{image_id}.jpg", _jpeg_bytes(pixels))
        by_key = {key: polygons for key, _c, polygons, _e, _crowd in PHOTO_OBJECTS[photo_name]}
        for key, label in objects:
            absolute = [_absolute(p, width, height, False) for p in by_key[key]]
            mask = _raster(absolute, width, height)
            half = mask_counter % 2 == 1
            stored = mask
            if half:
                stored = np.asarray(Image.fromarray(mask).resize((width // 2, height // 2), Image.NEAREST))
            rows.append(_oi_row(image_id, label, key, mask, masks_dir, stored, mask_counter))
            mask_counter += 1
    if corrupt:
        image_id = _hex("oi/coffee", 16)
        cup = next(r for r in rows if r["LabelName"] == "/m/02p5f1q")
        for problem in ("missing", "garbage", "empty", "no_image"):
            box_id = _hex(f"oi/corrupt/{problem}", 8)
            target_image = _hex("oi/not-on-disk", 16) if problem == "no_image" else image_id
            mask_path = f"{target_image}_{'m02p5f1q'}_{box_id}.png"
            row = dict(cup, MaskPath=mask_path, ImageID=target_image, BoxID=box_id)
            if problem == "garbage":
                _write(masks_dir / mask_path, b"\x89PNG not really a png")
            elif problem == "empty":
                _write(masks_dir / mask_path, _png_bytes(np.zeros((40, 60), bool), "L"))
            elif problem == "no_image":
                mask = np.zeros((120, 160), bool)
                mask[30:90, 40:100] = True
                _write(masks_dir / mask_path, _png_bytes(mask, "L"))
            rows.append(row)

    csv_path = root / "validation-annotations-object-segmentation.csv"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=OPENIMAGES_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    _write(csv_path, buf.getvalue().encode())
    classes_path = root / "oidv7-class-descriptions.csv"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["LabelName", "DisplayName"])
    writer.writerows(OPENIMAGES_CLASSES)
    _write(classes_path, buf.getvalue().encode())
    return SourceConfig(
        name=name,
        format="openimages",
        images=str(images_dir),
        annotations=(str(csv_path),),
        masks=str(masks_dir),
        class_descriptions=str(classes_path),
    )


def _oi_row(image_id, label, key, mask, masks_dir: Path, stored: np.ndarray, counter: int) -> dict:
    box_id = _hex(f"oi/{image_id}/{key}", 8)
    mask_path = f"{image_id}_{label.strip('/').replace('/', '')}_{box_id}.png"
    folder = masks_dir / mask_path[0] if counter % 2 == 0 else masks_dir
    _write(folder / mask_path, _png_bytes(stored, "1" if counter % 3 == 0 else "L"))
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    return {
        "MaskPath": mask_path,
        "ImageID": image_id,
        "LabelName": label,
        "BoxID": box_id,
        "BoxXMin": f"{xs.min() / width:.6f}",
        "BoxXMax": f"{(xs.max() + 1) / width:.6f}",
        "BoxYMin": f"{ys.min() / height:.6f}",
        "BoxYMax": f"{(ys.max() + 1) / height:.6f}",
        "PredictedIoU": f"{0.80 + 0.01 * (counter % 10):.2f}",
        "Clicks": f"{xs.mean() / width:.5f} {ys.mean() / height:.5f} 1",
    }
