"""Re-identification folders in Market-1501's naming (`0002_c1s1_000451_03.jpg`)."""

import os
import re

import numpy as np

from tfmetric.data.sources import (
    _IMAGE_EXTENSIONS,
    Source,
    _check_images,
    _decode_image_fn,
    check_image_folder,
)

# identity (-1 for junk), then `_c` and the camera: Market-1501 and DukeMTMC-reID names.
_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def reid_folder(directory, image_size=(128, 64), channels=3, validate=True, drop_junk=False):
    """A `Source` of a re-identification image folder named as Market-1501's.

    Every image's name starts with its identity and camera:
    `0002_c1s1_000451_03.jpg` is identity 2 seen by camera 1 (Market-1501);
    `0001_c2_f0046182.jpg` the same for DukeMTMC-reID. Identity `-1` marks
    junk images and `0` distractors (Market-1501's `bounding_box_test`).
    Point it at one split folder (`bounding_box_train`, `bounding_box_test`,
    `query`). Images are decoded per batch as in `image_directory`.

    Args:
        directory: The folder of images.
        image_size: `(height, width)` of the resized images, or one integer
            `n` for `(n, n)`. Defaults to `(128, 64)`, the usual
            re-ID input.
        channels: 1 or 3. Defaults to `3`.
        validate: Decode every image once to detect corrupt files. Defaults
            to `True`.
        drop_junk: Leave out junk (`-1`) and distractor (`0`) images, as for
            training. Defaults to `False` (evaluation keeps them).

    Returns:
        A `Source` whose labels are the identities and which has one more
        attribute, `cameras` (int64, one camera id per image); `x` holds the
        sorted file paths.

    Raises:
        ValueError: for a missing folder, no image, or image names that do
            not start with `<identity>_c<camera>` (listing them).

    Example:

    >>> import os, tempfile
    >>> from PIL import Image
    >>> folder = tempfile.mkdtemp()
    >>> for name in ["0002_c1s1_000451_03.jpg", "0002_c3s1_000551_01.jpg", "-1_c1s1_000001_00.jpg"]:
    ...     Image.new("RGB", (64, 128)).save(os.path.join(folder, name))
    >>> source = tfmetric.data.reid_folder(folder)
    >>> source.labels.tolist(), source.cameras.tolist()
    ([-1, 2, 2], [1, 1, 3])
    """
    directory, image_size = check_image_folder(directory, channels, image_size)
    files = sorted(f for f in os.listdir(directory) if f.lower().endswith(_IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"`directory` {directory!r} holds no .jpg/.jpeg/.png image.")
    parsed = [(f, _NAME.match(f)) for f in files]
    bad = [f for f, match in parsed if match is None]
    if bad:
        raise ValueError(
            f"{len(bad)} image name(s) in {directory!r} do not start with "
            f"`<identity>_c<camera>` (e.g. 0002_c1s1_000451_03.jpg): {bad[:10]}."
        )
    identities = np.array([int(m.group(1)) for _, m in parsed], np.int64)
    cameras = np.array([int(m.group(2)) for _, m in parsed], np.int64)
    paths = np.array([os.path.join(directory, f) for f in files])
    if drop_junk:
        keep = identities > 0
        if not keep.any():
            raise ValueError(f"`directory` {directory!r} holds only junk / distractor images.")
        paths, identities, cameras = paths[keep], identities[keep], cameras[keep]
    if validate:
        _check_images(list(paths), channels)
    source = Source(paths, identities, decode=_decode_image_fn(image_size, channels))
    source.cameras = cameras
    return source
