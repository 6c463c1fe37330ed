"""Class activation heatmaps with the ``grad-cam`` library (pytorch_grad_cam), drawn over the input image.

The CAM is computed on the model's input (the center crop after resizing) at the output of the
architecture's last feature stage (the zoo spec's ``last_stage``), then placed back over the
crop's area of the original image, so every heatmap has the size of the image it explains.

Most methods weigh the activations by one class's score, so each class gets its own heatmap. A
class-agnostic method (``CLASS_AGNOSTIC``: EigenCAM draws the first principal component of the
activations) gives the same map whatever the class: one heatmap per image, which stands for all
of its top-k classes.
"""

from __future__ import annotations

import copy
import io
import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..backends.base import RunInfo
from ..core.device import Device, resolve_device
from ..core.errors import ResnetkitError
from ..core.zoo import get_spec
from ..run.classify import Prediction, top_k
from ..run.loading import Classifier

METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam")
CLASS_AGNOSTIC = ("eigencam",)  # methods whose heatmap does not depend on the target class


def _cam_class(method: str):
    import pytorch_grad_cam as gc

    classes = {"gradcam": gc.GradCAM, "gradcam++": gc.GradCAMPlusPlus, "hirescam": gc.HiResCAM,
               "xgradcam": gc.XGradCAM, "layercam": gc.LayerCAM, "eigencam": gc.EigenCAM}
    if method not in classes:
        raise ResnetkitError(f"Unknown explanation method '{method}'. Choose one of: {', '.join(METHODS)}.")
    return classes[method]


@dataclass
class Heatmap:
    """A heatmap over one image, an RGB overlay of the image's size, and the classes it shows: one class, or
    with a class-agnostic method every top-k class (the same map for each)."""

    predictions: list[Prediction]
    overlay: np.ndarray  # H x W x 3 uint8
    method: str

    @property
    def prediction(self) -> Prediction:
        """The class explained (the top one, for a class-agnostic heatmap)."""
        return self.predictions[0]

    @property
    def class_agnostic(self) -> bool:
        return self.method in CLASS_AGNOSTIC

    def png(self, model: str) -> bytes:
        """The overlay as PNG, with the label and score (or class_agnostic), method and model as text chunks."""
        info = PngInfo()
        about = (("class_agnostic", "true"),) if self.class_agnostic else (
            ("label", self.prediction.label), ("score", f"{self.prediction.score:.6f}"))
        for key, value in (*about, ("method", self.method), ("model", model)):
            info.add_text(key, value)
        buffer = io.BytesIO()
        Image.fromarray(self.overlay).save(buffer, format="PNG", pnginfo=info)
        return buffer.getvalue()


def crop_box(size: tuple[int, int], resize_size: int, crop_size: int) -> tuple[int, int, int, int]:
    """The area of an image of ``size`` (W, H) that 'resize shorter side, then center-crop' keeps."""
    width, height = size
    side = crop_size * min(width, height) / resize_size
    left, top = (width - side) / 2, (height - side) / 2
    return round(left), round(top), round(left + side), round(top + side)


def place_on_image(cam: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """The crop-sized ``cam`` (values 0..1) resized into ``box`` of a zero map of ``size`` (W, H)."""
    full = np.zeros((size[1], size[0]), dtype=np.float32)
    left, top, right, bottom = box
    resized = Image.fromarray(cam.astype(np.float32), mode="F").resize((right - left, bottom - top), Image.BILINEAR)
    # parts of the box outside the image (crop larger than a side) are clipped
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(right, size[0]), min(bottom, size[1])
    full[y0:y1, x0:x1] = np.asarray(resized)[y0 - top:y1 - top, x0 - left:x1 - left]
    return np.clip(full, 0.0, 1.0)


class Explainer:
    """A float32 copy of a classifier's module with a CAM on its last stage, on ``device`` (``--device`` words;
    None: where the classifier runs); one image at a time."""

    def __init__(self, classifier: Classifier, method: str = "gradcam", device: str | Device | None = None) -> None:
        module = classifier.torch_module("explain")
        self.cam_class = _cam_class(method)
        self.device = classifier.ran.device if device is None else resolve_device(device)
        self.method = method
        self.meta = classifier.meta
        self.transform = classifier.transform
        # the CAM library runs where the module's parameters are, and takes gradients: fp32 eager PyTorch
        self.module = copy.deepcopy(module).to(self.device.torch, torch.float32).eval()
        self.target_layer = self.module.get_submodule(get_spec(classifier.meta.arch).last_stage)
        self._lock = threading.Lock()  # the CAM's hooks are per module: one image at a time

    @property
    def ran(self) -> RunInfo:
        """What computes the predictions and heatmaps, and where."""
        return RunInfo("eager", "fp32", self.device)

    @property
    def class_agnostic(self) -> bool:
        """The method draws one map whatever the class (see :data:`CLASS_AGNOSTIC`)."""
        return self.method in CLASS_AGNOSTIC

    def explain(self, image: Image.Image, k: int = 3) -> list[Heatmap]:
        """Heatmaps of the ``k`` most probable classes of ``image`` (an RGB PIL image): one per class, or one for
        all ``k`` with a class-agnostic method."""
        from pytorch_grad_cam.utils.image import show_cam_on_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        batch = self.transform(image).unsqueeze(0).to(self.device.torch)
        with self._lock:
            with torch.no_grad():
                predictions = top_k(torch.softmax(self.module(batch), dim=1), self.meta.categories, k)[0]
            groups = [predictions] if self.class_agnostic else [[p] for p in predictions]
            targets = [ClassifierOutputTarget(group[0].index) for group in groups]
            with torch.enable_grad(), self.cam_class(model=self.module, target_layers=[self.target_layer]) as cam:
                maps = cam(input_tensor=batch.repeat(len(targets), 1, 1, 1), targets=targets)
        pre = self.meta.preprocessing
        box = crop_box(image.size, pre.resize_size, pre.crop_size)
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        return [Heatmap(group, show_cam_on_image(pixels, place_on_image(m, image.size, box), use_rgb=True), self.method)
                for group, m in zip(groups, maps)]
