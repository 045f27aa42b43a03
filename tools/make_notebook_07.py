"""Write notebooks/07_transfer_learning.ipynb from the cell sources below (no outputs, no execution counts).

Run from the repository root: ``python tools/make_notebook_07.py``; ``--check``
exits 1 when the committed notebook differs from what this script generates.
The conventions are those of ``tools/make_notebooks.py``: cells tagged ``plot``
display an image, the last code cell (tagged ``table``) prints the results
table whose header is stored in the notebook metadata (``clrfit.table_header``).
``tests/test_notebook_07.py`` checks the file and (slow) executes it.
"""
from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
PATH = ROOT / "notebooks" / "07_transfer_learning.ipynb"

COLUMNS = ["stage", "trainable groups", "epochs", "val_loss", "accuracy"]

FLAG = '''\
# False: a generated folder of small images (3 classes) and an untrained resnet18 (CPU, well under a minute).
# True: your own images in ImageFolder layout at DATA_PATH (train/<class>/*, valid/<class>/*) and
# ImageNet weights for resnet18 (torchvision downloads them on first use; a GPU helps).
USE_REAL_DATA = False
DATA_PATH = "data/pets"'''

CELLS = [
    ("md", """\
# Transfer learning on your own images

The fastai 0.7 workflow on a folder of images: point clrfit at the folder,
put a new head on a pretrained network, train the head alone with the body
frozen, find a learning rate with `lr_find2`, train with a cyclical schedule
(`use_clr`), then unfreeze and fine-tune everything with *discriminative*
learning rates (smaller for early layers) and 1cycle (`use_clr_beta`), keeping
the best weights. Last, predictions and test-time augmentation.

With the flag below off it runs anywhere on a generated folder (no download);
switch it on to run the same cells on your data with ImageNet weights."""),
    ("code", FLAG),
    ("md", """\
## The data

`ModelData.from_folder` reads the `ImageFolder` layout: one sub-folder per class
under `train/` and `valid/`. Training images get a random resized crop and a
horizontal flip (`augment=True`), validation images a resize and center crop;
all are normalised with the channel statistics of the training images
(`normalize="data"`) or, for ImageNet weights, ImageNet's."""),
    ("code", '''\
%matplotlib inline
import math
from pathlib import Path

import torch
import torchvision
from matplotlib.figure import Figure
from PIL import Image

from clrfit import Learner, ModelData, accuracy, callbacks as cb


def generated_folder(root, n_train=24, n_valid=8, size=32):
    """root/{train,valid}/<class>/*.png: noisy, randomly striped images whose dominant colour is the class."""
    for split, n, offset in (("train", n_train, 0), ("valid", n_valid, 1000)):
        for c, name in enumerate(["red", "green", "blue"]):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                g = torch.Generator().manual_seed(10_000 * c + offset + i)
                x = torch.rand(size, size, 3, generator=g) * 0.5
                x[..., c] += 0.4
                period = int(torch.randint(3, 8, (), generator=g))
                x[::period] *= 0.5  # texture shared by all classes
                Image.fromarray((x.clamp(0, 1) * 255).byte().numpy()).save(folder / f"{i}.png")
    return root


torch.manual_seed(0)
if USE_REAL_DATA:
    path, SIZE, BS, WEIGHTS, NORMALIZE, EPOCHS = Path(DATA_PATH), 224, 64, "DEFAULT", "imagenet", 3
else:
    torch.set_num_threads(1)  # tiny images: more threads only contend on a busy CPU
    path, SIZE, BS, WEIGHTS, NORMALIZE, EPOCHS = generated_folder(Path("generated_images")), 32, 16, None, "data", 2
data = ModelData.from_folder(path, size=SIZE, bs=BS, augment=True, normalize=NORMALIZE)
print(data, "classes:", data.classes)'''),
    ("code", '''\
def show_batch(data, n=8):
    """The first n augmented training images, un-normalised, with their class."""
    xb, yb = next(iter(data.trn_dl))
    mean, std = xb.mean(dim=(0, 2, 3), keepdim=True), xb.std(dim=(0, 2, 3), keepdim=True)
    images = ((xb - mean) / (4 * std) + 0.5).clamp(0, 1)
    fig = Figure(figsize=(2 * n, 2.3))
    for i in range(min(n, len(xb))):
        ax = fig.add_subplot(1, n, i + 1)
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        ax.set_title(data.classes[int(yb[i])], fontsize=9)
        ax.axis("off")
    return fig


show_batch(data)''', ["plot"]),
    ("md", """\
## A pretrained network with a new head

`Learner.from_pretrained` replaces the classifier of a torchvision model
(ResNet, VGG, DenseNet, MobileNet, EfficientNet, ConvNeXt, ViT) with one for
this data's classes and splits the network into three layer groups: early
body, late body, head. `learn.freeze()` leaves only the head trainable; with
`bn_freeze=True` the frozen BatchNorm layers also keep their ImageNet
statistics."""),
    ("code", '''\
model = torchvision.models.resnet18(weights=WEIGHTS)
learn = Learner.from_pretrained(model, data, metrics=[accuracy], progress=False)
learn.freeze()


def trainable():
    return [sum(p.numel() for p in g["params"] if p.requires_grad) for g in learn.opt.param_groups]


print("layer groups:", learn.n_groups, " trainable parameters per group:", trainable())'''),
    ("md", """\
## Find a learning rate for the head

`lr_find2` sweeps the learning rate up exponentially over `num_it` steps,
evaluating one validation batch after each, and afterwards restores the model
and optimizer exactly."""),
    ("code", '''\
suggestion = learn.lr_find2(start_lr=1e-4, end_lr=10, num_it=40)
lr = suggestion.valley if math.isfinite(suggestion.valley) else 1e-2
lr = min(max(lr, 1e-3), 0.1)  # keep the demo in a sensible range whatever the tiny sweep says
print(f"learning rate for the head: {lr:.3g}")'''),
    ("code", "learn.sched.plot()", ["plot"]),
    ("md", """\
## Train the head: `use_clr=(32, 5)`

The slanted triangle: the learning rate rises from `lr/32` to `lr` over the
first fifth of the cycle, then falls back."""),
    ("code", '''\
learn.fit(lr, 1, cycle_len=EPOCHS, use_clr=(32, 5))
frozen_result = (learn.sched.val_losses[-1], learn.sched.rec_metrics[-1][0], EPOCHS)'''),
    ("code", "learn.sched.plot_lr(show_epochs=True)", ["plot"]),
    ("md", """\
## Unfreeze: discriminative learning rates and 1cycle

`learn.unfreeze()` makes the whole network trainable. `fit([lr/100, lr/10, lr], ...)`
gives each layer group its own learning rate: early layers, which hold the most
general features, move least. `use_clr_beta=(10, 10, 0.95, 0.85)` is the 1cycle
policy with cyclical momentum. `SaveBest` keeps the weights of the best epoch
and loads them at the end; `CSVLogger` writes one row per epoch."""),
    ("code", '''\
learn.unfreeze()
print("trainable parameters per group:", trainable())
lrs = [lr / 100, lr / 10, lr]
learn.fit(lrs, 1, cycle_len=EPOCHS, use_clr_beta=(10, 10, 0.95, 0.85),
          callbacks=[cb.SaveBest("val_loss", path="models/best.pt", load_best=True), cb.CSVLogger("log.csv")])
print(Path("log.csv").read_text())'''),
    ("code", '''\
sched = learn.sched
fig = Figure(figsize=(7, 3.5))
ax = fig.add_subplot()
for i, name in enumerate(["early body", "late body", "head"]):
    ax.plot(sched.iterations, [g[i] for g in sched.group_lrs], label=name)
ax.set_yscale("log")
ax.set_xlabel("iteration")
ax.set_ylabel("learning rate")
ax.set_title("discriminative learning rates: one 1cycle per layer group")
ax.legend()
fig''', ["plot"]),
    ("md", """\
## Predictions

`learn.get_preds()` returns the model's outputs and targets for the validation
set in dataset order; `learn.predict(x)` does one batch; `learn.tta()` averages
the class probabilities of the plain images with those of `n` augmented passes
(fastai 0.7's TTA)."""),
    ("code", '''\
preds, targets = learn.get_preds()
plain_acc = (preds.argmax(1) == targets).float().mean().item()
probs, _ = learn.tta(n=4)
tta_acc = (probs.argmax(1) == targets).float().mean().item()
best_loss = float(torch.nn.functional.cross_entropy(preds, targets))
xb, _ = next(iter(data.val_dl))
print("predict on one batch:", tuple(learn.predict(xb).shape))
print(f"accuracy: plain {plain_acc:.3f}, with TTA {tta_acc:.3f}")'''),
    ("md", """\
## Results

On the generated folder the network starts from random weights (nothing is
downloaded) and sees 72 tiny images for a few epochs, so these numbers only
show the mechanics; TTA's random crops are harsh on 32-pixel images. With
`USE_REAL_DATA = True` the body starts from ImageNet weights, which is where
freezing, discriminative learning rates and TTA pay off."""),
    ("code", '''\
def markdown_table(header, rows):
    """Rows as a Markdown table (plain text: no pandas needed)."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\\n".join(lines)


rows = [
    ["head only (frozen body), use_clr", "head", frozen_result[2], frozen_result[0], frozen_result[1]],
    ["all layers, discriminative lrs, use_clr_beta (best epoch)", "all", EPOCHS, best_loss, plain_acc],
    ["the same with TTA (n=4)", "all", EPOCHS, "-", tta_acc],
]
print(markdown_table(''' + repr(COLUMNS) + ''', rows))''', ["table"]),
]


def table_header(columns: list[str]) -> str:
    """The first line ``markdown_table`` prints for these columns."""
    return "| " + " | ".join(columns) + " |"


def build() -> nbformat.NotebookNode:
    """The notebook with deterministic cell ids and no outputs."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "clrfit": {"table_header": table_header(COLUMNS)},
    }
    for i, spec in enumerate(CELLS):
        kind, source = spec[0], textwrap.dedent(spec[1]).strip("\n")
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        cell.id = f"c{i:02d}"
        if len(spec) > 2:
            cell.metadata["tags"] = list(spec[2])
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render() -> str:
    """The file text of the notebook."""
    return nbformat.writes(build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the notebook, or with ``--check`` report whether it is stale."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed notebook differs")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not PATH.exists() or PATH.read_text(encoding="utf-8") != text:
            print(f"out of date (run python tools/make_notebook_07.py): {PATH.name}", file=sys.stderr)
            return 1
        return 0
    PATH.parent.mkdir(exist_ok=True)
    PATH.write_text(text, encoding="utf-8")
    print(f"wrote notebooks/{PATH.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
