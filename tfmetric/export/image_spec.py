"""How the `*_images` signatures turn encoded images into model inputs."""

import numpy as np

__all__ = ["SCALINGS", "ImageSpec"]

SCALINGS = ("unit", "symmetric", "raw", "imagenet")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageSpec:
    """How `embed_images` turns encoded images into model inputs.

    Images are decoded (JPEG, PNG, GIF or BMP) to `channels` channels, resized
    bilinearly to `height` × `width` (aspect ratio not kept), then scaled from
    `[0, 255]`:

    - `"unit"`: to `[0, 1]`;
    - `"symmetric"`: to `[-1, 1]`;
    - `"raw"`: kept in `[0, 255]` (for models that rescale inside);
    - `"imagenet"`: to `[0, 1]`, then standardised with the ImageNet mean and std.

    Args:
        height: Image height in pixels.
        width: Image width in pixels.
        channels: 1 (grayscale) or 3 (RGB). Defaults to `3`.
        scaling: One of `"unit"`, `"symmetric"`, `"raw"`, `"imagenet"`.
            Defaults to `"unit"`.

    Example:

    >>> spec = tfmetric.export.ImageSpec.for_input_shape((32, 32, 3))
    >>> spec.to_json()
    {'height': 32, 'width': 32, 'channels': 3, 'scaling': 'unit'}
    """

    def __init__(self, height, width, channels=3, scaling="unit"):
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; got {value!r}.")
        if channels not in (1, 3):
            raise ValueError(f"`channels` must be 1 or 3; got {channels!r}.")
        if scaling not in SCALINGS:
            raise ValueError(f"`scaling` must be one of {list(SCALINGS)}; got {scaling!r}.")
        self.height, self.width = int(height), int(width)
        self.channels = int(channels)
        self.scaling = scaling

    @classmethod
    def for_input_shape(cls, input_shape, height=None, width=None, channels=None, scaling=None):
        """The spec of a channels-last image input, overriding any given field.

        Returns `None` when the input is not an image (not rank 3 without the
        batch) and nothing was overridden.

        Raises:
            ValueError: if fields are given for an input that cannot take images,
                or a free dimension has no value.
        """
        given = {"height": height, "width": width, "channels": channels, "scaling": scaling}
        if len(input_shape) != 3:
            if any(v is not None for v in given.values()):
                raise ValueError(
                    f"`image_spec` was given, but the model input shape {tuple(input_shape)} "
                    "is not an image (height, width, channels)."
                )
            return None
        model_h, model_w, model_c = input_shape
        if model_c is not None and model_c not in (1, 3):
            if any(v is not None for v in given.values()):
                raise ValueError(
                    f"The model input has {model_c} channels; `embed_images` needs 1 or 3."
                )
            return None
        for field, given_value, model_value in (
            ("height", height, model_h),
            ("width", width, model_w),
        ):
            if given_value is not None and model_value is not None and given_value != model_value:
                raise ValueError(
                    f"`image_spec` {field} is {given_value} but the model input has {model_value}."
                )
        height = height if height is not None else model_h
        width = width if width is not None else model_w
        if height is None or width is None:
            raise ValueError(
                f"The model input shape {tuple(input_shape)} has a free height or width; "
                "give the image `height` and `width`."
            )
        if model_c is not None and channels is not None and channels != model_c:
            raise ValueError(f"`channels` is {channels} but the model input has {model_c}.")
        channels = channels if channels is not None else (model_c or 3)
        return cls(height, width, channels, scaling or "unit")

    def preprocess(self, pixels):
        """Scales float32 pixels in `[0, 255]` (a tf tensor) as the spec says."""
        if self.scaling == "unit":
            return pixels / 255.0
        if self.scaling == "symmetric":
            return pixels / 127.5 - 1.0
        if self.scaling == "raw":
            return pixels
        mean = np.asarray(_IMAGENET_MEAN[: self.channels], "float32")
        std = np.asarray(_IMAGENET_STD[: self.channels], "float32")
        return (pixels / 255.0 - mean) / std

    def to_json(self):
        return {
            "height": self.height,
            "width": self.width,
            "channels": self.channels,
            "scaling": self.scaling,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_json().items())
        return f"ImageSpec({args})"
