"""The bundled `demo` source: six real photos with hand-drawn instance polygons, in COCO format.

The photos are scikit-image's bundled sample photos (the astronaut, the cameraman, Chelsea the
cat, the coffee cup, the Middlebury motorcycle and the Falcon 9 rocket), downscaled so the longer
side is at most 512 px and stored as JPEG (quality 95) in `images/`. `annotations.json` is a
COCO *instances* file: 22 instances drawn by hand for PBI, with real COCO category ids where COCO
has the class (person=1, motorcycle=4, cat=17, bottle=44, cup=47, spoon=50) and ids from 1000 up
for classes COCO lacks (rocket, saucer, tripod, ...). Areas and boxes were computed with
pycocotools from the polygons. About half pass the default candidate filters; the others are
rejected for what they really are (the cat fills 75 % of its photo, the bottle and a small box
are under 0.5 %, the flag, the towers and others are cut by the image border), so a demo run
shows rejection reasons too.

Credits, licences and how the files were made: SOURCE.md next to this file.

The demo is read like any other COCO source (`pbi_ml.config.demo_source()`); this module only
says where the files are inside the installed package.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent


def images_dir() -> Path:
    """The directory holding the demo photos (the COCO `file_name`s are relative to it)."""
    return _HERE / "images"


def annotations_path() -> Path:
    """The demo's COCO instances JSON file."""
    return _HERE / "annotations.json"
