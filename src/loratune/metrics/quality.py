"""Technical quality: any pyiqa no-reference metric (MUSIQ by default) and the weight-free PIQE.

pyiqa's own table (``pyiqa.default_model_configs.DEFAULT_CONFIGS``) says each metric's direction (``lower_better``)
and score range; the ``pyiqa`` backend takes both from there for whatever ``metric`` the config names, so
normalisation and direction stay right for any of pyiqa's ~70 no-reference metrics.

Weights: pyiqa downloads its checkpoints on first use (into torch hub's cache, where a pre-fetched file is found
offline). A local checkpoint file can be given as ``model``. Told offline (``HF_HUB_OFFLINE=1``), loratune lets pyiqa
read its cache but never start a download: a checkpoint that is not there counts as a failed download. When the
download fails (offline) the metric is built with ``pretrained=False`` — random weights — and every result says
"stand-in weights"; ``require_pretrained: true`` turns that into an error instead. PIQE needs no weights at all and is
the real offline default.

Images are scored in batches: the images of one ``update`` that share a size go through the metric as one tensor
(MUSIQ and PIQE score each row on its own, so a batch gives each image's own score).

Licence: pyiqa is released under the PolyForm Noncommercial License 1.0.0 (its LICENSE file), some components under the
NTU S-Lab License 1.0 — both non-commercial use only; several metrics' weights carry their own terms.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from loratune.chatter import verbose
from loratune.errors import LoratuneError
from loratune.metrics.base import AxisResult, Backend, EvalImage
from loratune.metrics.cache import cached_model
from loratune.metrics.openclip_models import first_line
from loratune.modelref import is_stand_in

if TYPE_CHECKING:
    import torch

PYIQA_LICENCE = "PolyForm Noncommercial 1.0.0 + NTU S-Lab License 1.0 (non-commercial use only; pyiqa) + each metric's weights' own terms"


def pyiqa_metric_info(name: str, field: str = "evaluation.backends.quality") -> tuple[tuple[float, float], bool]:
    """(score range, higher_is_better) of a pyiqa no-reference metric, from pyiqa's own table."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    cfg = DEFAULT_CONFIGS.get(name)
    if cfg is None:
        raise LoratuneError(f"{field}.metric: unknown pyiqa metric {name!r}")
    if cfg.get("metric_mode") != "NR":
        raise LoratuneError(
            f"{field}.metric: pyiqa metric {name!r} needs a reference image (choose a no-reference one)"
        )
    return parse_score_range(str(cfg.get("score_range", "0, 1"))), not cfg.get("lower_better", False)


def parse_score_range(text: str) -> tuple[float, float]:
    """pyiqa writes ranges like ``"~0, ~100"`` (``~`` = approximately)."""
    numbers = [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", text)]
    return (numbers[0], numbers[1]) if len(numbers) >= 2 else (0.0, 1.0)


def _takes_pretrained(metric: str) -> bool:
    from pyiqa.archs import ARCH_REGISTRY
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    arch = ARCH_REGISTRY.get(DEFAULT_CONFIGS[metric]["metric_opts"]["type"])
    return "pretrained" in inspect.signature(arch.__init__).parameters


def check_plain_checkpoint(path: str, field: str) -> None:
    """Refuse a checkpoint that is not plain tensors and containers before pyiqa reads it.

    pyiqa unpickles weights with weights_only switched off, which runs any code pickled into the file; a file that
    loads with ``weights_only=True`` holds only tensors and plain containers, so pyiqa's load of it is safe.
    """
    import torch

    if Path(path).suffix == ".safetensors":
        raise LoratuneError(f"{field}: pyiqa reads torch checkpoints (.pth), not .safetensors: {path}")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (unsafe pickle, corrupt or foreign file: the user's to fix)
        raise LoratuneError(f"{field}: not a plain weights checkpoint {path} ({first_line(err)})") from None


class OfflineDownloadRefused(OSError):
    """pyiqa wanted to download a file while ``HF_HUB_OFFLINE=1``; an OSError like the failed download it replaces."""


@contextmanager
def _downloads_refused_when_offline() -> Iterator[None]:
    """While pyiqa builds a metric offline, its downloader raises instead of opening a connection.

    Every pyiqa download goes through ``pyiqa.utils.download_util.load_file_from_url``, which returns a cached file
    and calls that module's ``download_url_to_file`` only for a missing one: swapping that name is the one place
    that covers every architecture (pyiqa itself has no offline switch; its hub downloads honour HF_HUB_OFFLINE).
    """
    from huggingface_hub import constants
    from pyiqa.utils import download_util

    if not constants.HF_HUB_OFFLINE:
        yield
        return

    def refuse(url: str, dst: str, *_args: Any, **_kwargs: Any) -> None:
        raise OfflineDownloadRefused(
            f"HF_HUB_OFFLINE=1 and {Path(dst).name} is not in pyiqa's cache {Path(dst).parent} (nothing was "
            f"downloaded; fetch {url} there, or give the file as model)"
        )

    original = download_util.download_url_to_file
    download_util.download_url_to_file = refuse
    try:
        yield
    finally:
        download_util.download_url_to_file = original


@contextmanager
def _pyiqa_prints_hidden() -> Iterator[None]:
    """pyiqa announces downloads and weight loads with ``print`` (no logger to quiet): kept off stdout, where a
    script reads loratune's JSON, unless the user asked for the libraries' output (``loratune -v``)."""
    if verbose():
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def load_pyiqa_metric(
    metric: str, device: Any, weights: str | None, require_pretrained: bool, field: str
) -> tuple[Any, bool]:
    """Build a pyiqa metric; returns (metric, stand_in). Falls back to random weights only when allowed."""
    import pyiqa

    if weights is not None:
        check_plain_checkpoint(weights, f"{field}.model")
        try:
            with _downloads_refused_when_offline(), _pyiqa_prints_hidden():
                return pyiqa.create_metric(metric, device=device, pretrained_model_path=weights), False
        except Exception as err:  # noqa: BLE001  (wrong architecture or keys in the user's file)
            raise LoratuneError(
                f"{field}.model: cannot load {weights} into pyiqa {metric!r}: {first_line(err)}"
            ) from None
    try:
        with _downloads_refused_when_offline(), _pyiqa_prints_hidden():
            return pyiqa.create_metric(metric, device=device), False
    except OSError as err:  # urllib's URLError (no network), a refused offline download and missing files
        if require_pretrained or not _takes_pretrained(metric):
            raise LoratuneError(f"{field}: cannot load pyiqa {metric!r} weights ({first_line(err)})") from None
    try:
        with _downloads_refused_when_offline(), _pyiqa_prints_hidden():
            return pyiqa.create_metric(metric, device=device, pretrained=False), True
    except OSError as err:
        raise LoratuneError(
            f"{field}: pyiqa {metric!r} needs files that cannot be fetched ({first_line(err)})"
        ) from None


class PyiqaQuality(Backend):
    """Mean of a pyiqa no-reference metric over the images (each image scored at its own size)."""

    class Options(Backend.Options):
        metric: str | None = Field(None, description="pyiqa metric name; the registry entry's metric when omitted")
        require_pretrained: bool = Field(False, description="fail instead of falling back to random weights")
        max_side: int | None = Field(None, ge=32, description="downscale larger images first (speed); None = as is")

    options: Options
    default_metric: str = "musiq"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metric_name = self.options.metric or self.default_metric
        score_range, higher = pyiqa_metric_info(self.metric_name, self.field_path)
        if self.options.metric is not None and self.options.metric != self.default_metric:
            # The registry entry describes the default metric; this instance scores another one.
            from dataclasses import replace

            self.spec = replace(self.spec, score_range=score_range, higher_is_better=higher, norm_range=score_range)
        # ``model``: a checkpoint file for the metric, or ``pyiqa:<name>`` (the registry's label for pyiqa's own weights).
        model = self.config.model
        self.weights: str | None = None
        if model and not model.startswith("pyiqa:"):
            path = Path(model).expanduser()
            if not path.is_file():
                raise LoratuneError(f"{self.field_path}.model: pyiqa checkpoint not found: {model}")
            self.weights = str(path)
        self.model_id = f"pyiqa:{self.metric_name}" + (f" ({self.weights})" if self.weights else "")
        self.reset()

    def load(self) -> None:
        key = ("pyiqa", self.metric_name, self.weights, str(self.runtime.device), self.options.require_pretrained)
        self.metric, self.stand_in = cached_model(
            key,
            lambda: load_pyiqa_metric(
                self.metric_name, self.runtime.device, self.weights, self.options.require_pretrained, self.field_path
            ),
        )
        self.stand_in = self.stand_in or is_stand_in(self.weights)  # a checkpoint the tiny factory wrote

    def reset(self) -> None:
        self.per_image: list[float | None] = []

    def pixels(self, image: Any) -> torch.Tensor:
        """3 x H x W in [0, 1], downscaled to ``max_side`` first when set."""
        import numpy as np
        import torch

        if self.options.max_side and max(image.size) > self.options.max_side:
            image = image.copy()
            image.thumbnail((self.options.max_side, self.options.max_side))
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)

    def update(self, batch: list[EvalImage]) -> None:
        import torch

        pixels = [self.pixels(item.image) for item in batch]
        by_size: dict[tuple[int, ...], list[int]] = {}
        for index, x in enumerate(pixels):
            by_size.setdefault(tuple(x.shape), []).append(index)
        scores: list[float | None] = [None] * len(batch)
        with torch.inference_mode():
            for rows in by_size.values():
                values = self.metric(torch.stack([pixels[i] for i in rows]).to(self.runtime.device)).reshape(-1)
                if len(values) != len(rows):  # a metric that pools its batch: one image per call instead
                    alone = [self.metric(pixels[i][None].to(self.runtime.device)).reshape(-1) for i in rows]
                    values = torch.cat(alone)
                for index, score in zip(rows, values.tolist()):
                    scores[index] = float(score)
        self.per_image += scores

    def compute(self) -> AxisResult:
        scores = [s for s in self.per_image if s is not None]
        details = {"metric": self.metric_name, "higher_is_better": self.spec.higher_is_better, "licence": PYIQA_LICENCE}
        if not scores:
            return self.missing("no images", details=details)
        return self.result(sum(scores) / len(scores), per_image=self.per_image, details=details)


class Musiq(PyiqaQuality):
    default_metric = "musiq"


class Piqe(PyiqaQuality):
    default_metric = "piqe"
