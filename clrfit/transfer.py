"""Transfer learning: a torchvision classifier with a new head, split into layer groups; freezing.

``Learner.from_pretrained`` (:func:`pretrained_layer_groups`) replaces the
classifier head of a torchvision classification model with one for
``n_classes`` classes and builds a :class:`~clrfit.Learner` with three layer
groups (optimizer param groups):

===============================  ==============================  ==============================  ===============
model class (torchvision)        early body (group 0)            late body (group 1)             head (group 2)
===============================  ==============================  ==============================  ===============
``ResNet`` (ResNet, ResNeXt,     ``conv1, bn1, layer1, layer2``  ``layer3, layer4``              ``fc``
Wide ResNet)
``VGG``                          first half of ``features``      second half of ``features``     ``classifier``
``DenseNet``                     ``features`` before             ``features`` from               ``classifier``
                                 ``denseblock3``                 ``denseblock3``
``MobileNetV2``, ``MobileNetV3``, first half of ``features``     second half of ``features``     ``classifier``
``EfficientNet``, ``ConvNeXt``
``VisionTransformer``            ``conv_proj``, class token,     second half of encoder          ``heads``
                                 position embedding, first half  layers, final norm
                                 of encoder layers
===============================  ==============================  ==============================  ===============

so ``fit([lr / 100, lr / 10, lr], ...)`` trains the body gently and the new
head fast (discriminative learning rates). The new head's last ``Linear`` is
freshly initialised (PyTorch's default init, from the global torch RNG).

Freezing sets ``requires_grad=False`` on the parameters of the first ``n``
groups (``freeze_to(learn, n)``; ``freeze`` = all but the head; ``unfreeze`` =
none). Frozen parameters get no gradient, so no optimizer updates them (nor
applies weight decay or momentum to them). Their BatchNorm layers still update
their running statistics in training mode unless ``bn_freeze=True`` (fastai
0.7's ``bn_freeze``): then a forward pre-hook puts each BatchNorm layer whose
parameters are all frozen in eval mode before every forward pass, so it
survives the loop's ``model.train()`` at every epoch.
"""
from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from .data import ModelData
from .validation import ArgumentError, check_bool, check_int, escape

if TYPE_CHECKING:  # pragma: no cover
    from .learner import Learner

SUPPORTED = ("ResNet (and ResNeXt, Wide ResNet)", "VGG", "DenseNet", "MobileNetV2", "MobileNetV3",
             "EfficientNet", "ConvNeXt", "VisionTransformer")

# Forward pre-hook handles of the BatchNorm layers kept in eval mode, per model.
_BN_HOOKS: "weakref.WeakKeyDictionary[nn.Module, list[Any]]" = weakref.WeakKeyDictionary()


def pretrained_layer_groups(model: nn.Module, data: ModelData, n_classes: int | None = None,
                            learner_kwargs: dict[str, Any] | None = None) -> list[list[nn.Parameter]]:
    """Check the arguments, give ``model`` a new ``n_classes`` head (default: the data's class count), return its 3 groups.

    ``Learner.from_pretrained(model, data, n_classes, **kwargs)`` is
    ``Learner(model, data, layer_groups=pretrained_layer_groups(model, data, n_classes, kwargs), **kwargs)``.
    Every check runs before the head is replaced.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torchvision classification model (torch.nn.Module); got {type(model).__name__}")
    if not isinstance(data, ModelData):
        raise TypeError(f"data must be a clrfit.ModelData; got {type(data).__name__}")
    if "layer_groups" in (learner_kwargs or {}):
        raise TypeError("Learner.from_pretrained splits the model into layer groups itself; to choose them, "
                        "use Learner(model, data, layer_groups=[...]) directly")
    n_classes = infer_n_classes(data) if n_classes is None else check_int("n_classes", n_classes, minimum=1)
    _find_head(model)  # an unsupported model fails here, before the head is replaced
    return replace_head(model, n_classes)


def replace_head(model: nn.Module, n_classes: int) -> list[list[nn.Parameter]]:
    """Replace the classifier's last ``Linear`` with a new ``n_classes`` one (in place); returns the 3 layer groups."""
    n_classes = check_int("n_classes", n_classes, minimum=1)
    owner, attr, splitter = _find_head(model)
    old = getattr(owner, attr)
    new = nn.Linear(old.in_features, n_classes, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
    setattr(owner, attr, new)
    early, late, head = splitter(model)
    groups = [_params(early), _params(late), _params(head)]
    seen = set()
    for g in groups:
        seen.update(id(p) for p in g)
    missing = [name for name, p in model.named_parameters() if id(p) not in seen]
    if missing:  # a torchvision variant with extra parameters: keep them trainable in the late body
        lookup = dict(model.named_parameters())
        groups[1] += [lookup[name] for name in missing]
    return groups


def infer_n_classes(data: ModelData) -> int:
    """The number of classes: ``data.c``, else the training dataset's ``classes``, else max target + 1."""
    c = getattr(data, "c", None)
    if isinstance(c, int) and c >= 1:
        return c
    ds = data.trn_ds
    base = getattr(ds, "dataset", ds)  # a Subset's underlying dataset
    classes = getattr(base, "classes", None)
    if classes:
        return len(classes)
    targets = getattr(base, "targets", None)
    if targets is None and isinstance(base, torch.utils.data.TensorDataset) and len(base.tensors) >= 2:
        targets = base.tensors[1]
    if targets is not None:
        t = torch.as_tensor(targets)
        if not t.is_floating_point() and t.numel():
            return int(t.max()) + 1
    raise ArgumentError("n_classes", "{n_classes}=None: cannot infer the number of classes from the data (no data.c, "
                                     "dataset.classes or integer targets); pass {n_classes}=")


# ---------------------------------------------------------------------- freezing


def freeze_to(learn: "Learner", n: int, bn_freeze: bool = False) -> None:
    """Freeze layer groups ``0 .. n-1`` and unfreeze the rest; ``bn_freeze`` keeps frozen BatchNorm in eval mode."""
    groups = learn.opt.param_groups
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < len(groups):
        raise ArgumentError("n", f"freeze_to: {{n}} must be an integer in [0, {len(groups) - 1}] (how many leading "
                                 f"layer groups to freeze; this learner has {len(groups)} groups and the last stays "
                                 f"trainable); got {escape(repr(n))}")
    check_bool("bn_freeze", bn_freeze)
    for i, group in enumerate(groups):
        for p in group["params"]:
            p.requires_grad_(i >= n)
            if i < n:
                p.grad = None
    _set_bn_hooks(learn.model, groups[:n] if bn_freeze else [])
    _rewrap(learn)


def freeze(learn: "Learner", bn_freeze: bool = False) -> None:
    """Freeze every layer group but the last (the head)."""
    freeze_to(learn, len(learn.opt.param_groups) - 1, bn_freeze=bn_freeze)


def unfreeze(learn: "Learner") -> None:
    """Make every layer group trainable again (and let BatchNorm layers train)."""
    freeze_to(learn, 0)


def frozen_groups(learn: "Learner") -> int:
    """How many leading layer groups are frozen (all their parameters have ``requires_grad=False``)."""
    count = 0
    for group in learn.opt.param_groups:
        if any(p.requires_grad for p in group["params"]):
            break
        count += 1
    return count


def _set_bn_hooks(model: nn.Module, frozen: list[dict[str, Any]]) -> None:
    for handle in _BN_HOOKS.pop(model, []):
        handle.remove()
    frozen_ids = {id(p) for g in frozen for p in g["params"]}
    handles = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and all(id(p) in frozen_ids for p in params):
                handles.append(module.register_forward_pre_hook(_keep_eval))
    if handles:
        _BN_HOOKS[model] = handles


def _keep_eval(module: nn.Module, args: Any) -> None:
    # The loop calls model.train() every epoch; this puts a frozen BatchNorm back in eval mode each forward.
    module.training = False


def _rewrap(learn: "Learner") -> None:
    """Under DDP, re-wrap the model: DDP fixes at construction which parameters it reduces."""
    if learn.dist.enabled:
        learn.runtime.prepare(learn.model)
        learn.runtime._compiled.clear()  # compiled models would keep the old DDP wrapper
        learn.train_model, learn.eval_model = learn.runtime.models(None)


# ---------------------------------------------------------------------- model structure


def _find_head(model: nn.Module) -> tuple[nn.Module, str, Callable[[nn.Module], tuple[list, list, list]]]:
    """(module holding the last Linear, its attribute or index, the function splitting the model into 3 groups)."""
    from torchvision import models as tvm  # the caller holds a torchvision model: it is loaded already

    if isinstance(model, tvm.ResNet) and isinstance(model.fc, nn.Linear):
        return model, "fc", _split_resnet
    if isinstance(model, tvm.VisionTransformer) and isinstance(getattr(model.heads, "head", None), nn.Linear):
        return model.heads, "head", _split_vit
    if isinstance(model, tvm.DenseNet) and isinstance(model.classifier, nn.Linear):
        return model, "classifier", _split_densenet
    with_features = (tvm.VGG, tvm.MobileNetV2, tvm.MobileNetV3, tvm.EfficientNet, tvm.ConvNeXt)
    if isinstance(model, with_features) and isinstance(model.classifier, nn.Sequential):
        last = len(model.classifier) - 1
        if isinstance(model.classifier[last], nn.Linear):
            return model.classifier, str(last), _split_features
    raise ArgumentError(
        "model",
        f"{{model}}: cannot find the classifier head of a {type(model).__name__}; Learner.from_pretrained knows "
        f"torchvision's {', '.join(SUPPORTED)}. For another model, replace its head yourself and pass the groups by "
        "hand: Learner(model, data, layer_groups=[early_body, late_body, head]) (modules or lists of parameters)",
    )


def _split_resnet(m: nn.Module) -> tuple[list, list, list]:
    return [m.conv1, m.bn1, m.layer1, m.layer2], [m.layer3, m.layer4], [m.fc]


def _split_densenet(m: nn.Module) -> tuple[list, list, list]:
    children = list(m.features.named_children())
    cut = next((i for i, (name, _) in enumerate(children) if name == "denseblock3"), len(children) // 2)
    return [c for _, c in children[:cut]], [c for _, c in children[cut:]], [m.classifier]


def _split_features(m: nn.Module) -> tuple[list, list, list]:
    features = list(m.features.children())
    half = len(features) // 2
    return features[:half], features[half:], [m.classifier]


def _split_vit(m: nn.Module) -> tuple[list, list, list]:
    layers = list(m.encoder.layers.children())
    half = len(layers) // 2
    early = [m.conv_proj, m.class_token, m.encoder.pos_embedding, *layers[:half]]
    return early, [*layers[half:], m.encoder.ln], [m.heads]


def _params(items: list) -> list[nn.Parameter]:
    out: list[nn.Parameter] = []
    for item in items:
        out.extend([item] if isinstance(item, nn.Parameter) else item.parameters())
    return out
