"""Train a zoo model on its ``Scenes`` data: ``python -m captum_fgcam.zoo.train NAME``.

Deterministic (fixed seeds, fixed scenes); prints progress; saves a half-precision state dict
(``load_model`` casts it back to float32) and reports the held-out accuracy of that checkpoint.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from .registry import _entry, checkpoint_path, load_model, scenes

# Per-model defaults: (epochs, training scenes); the ResNet overfits 8000 scenes, 30000 it does not.
DEFAULTS: dict[str, tuple[int, int]] = {
    "scenes-vgg16bn": (12, 8000), "scenes-resnet": (5, 30000), "scenes-wall": (12, 8000),
    "scenes-fc-wall": (12, 8000), "scenes-vgg16bn-ig": (12, 8000), "scenes-hard": (16, 20000),
    "scenes-swin": (14, 20000), "scenes-vit": (14, 20000), "scenes-seg": (10, 8000),
    "scenes-det": (14, 8000),
}


def materialise(dataset: Dataset, count: int,
                label: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None
                ) -> tuple[Tensor, Tensor]:
    """The first ``count`` images and training targets of ``dataset`` as two tensors (the
    target: ``label(labels, masks, boxes)`` of each scene, default its label).

    Runs single-threaded: scenes are small tensors, for which intra-op threads only cost time.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        items = [dataset[i] for i in range(count)]
    finally:
        torch.set_num_threads(threads)
    targets = [it[1] if label is None else label(*it[1:]) for it in items]
    return torch.stack([it[0] for it in items]), torch.stack(targets)


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 250) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``images``."""
    model.eval()
    hits = sum((model(x).argmax(1) == y).sum().item()
               for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True))
    return hits / len(labels)


def scores(name: str, model: nn.Module, images: Tensor, targets: Tensor) -> dict[str, float]:
    """The held-out scores of zoo model ``name``: its entry's, or top-1 accuracy."""
    measure = _entry(name).accuracy
    if measure is None:
        return {"accuracy": accuracy(model, images, targets)}
    return measure(model, images, targets)


def _shown(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in values.items())


def fit(model: nn.Module, images: Tensor, labels: Tensor, epochs: int, batch_size: int = 64,
        lr: float = 3e-3, seed: int = 0,
        on_epoch: Callable[[int, float], None] | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> list[float]:
    """AdamW with a one-cycle schedule on ``loss_fn(images, labels)`` (default: cross-entropy
    of the model's logits); returns the loss of every step."""
    loss_fn = loss_fn or (lambda x, y: F.cross_entropy(model(x), y))
    g = torch.Generator().manual_seed(seed)
    per_epoch = len(labels) // batch_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch)
    losses = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(labels), generator=g)[:per_epoch * batch_size]
        for idx in order.split(batch_size):
            loss = loss_fn(images[idx].float(), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            losses.append(loss.item())
        if on_epoch is not None:
            on_epoch(epoch, sum(losses[-per_epoch:]) / per_epoch)
    return losses


def train(name: str, epochs: int, train_size: int, test_size: int = 1000,
          out: Path | None = None, seed: int = 0) -> tuple[dict[str, float], float]:
    """Train ``name`` from scratch, save it to ``out``; (held-out scores, seconds)."""
    start = time.perf_counter()
    label = _entry(name).label
    train_x, train_y = materialise(scenes(name, "train", length=train_size), train_size, label)
    test_x, test_y = materialise(scenes(name, "test", length=test_size), test_size, label)
    train_x = train_x.half().contiguous(memory_format=torch.channels_last)  # half the memory
    print(f"{name}: {train_size} training scenes generated in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    torch.manual_seed(seed)
    model = _entry(name).build().to(memory_format=torch.channels_last)

    def report(epoch: int, loss: float) -> None:
        acc = _shown(scores(name, model, test_x[:500], test_y[:500]))
        print(f"epoch {epoch + 1}/{epochs}  loss {loss:.3f}  test (500): {acc}  "
              f"{time.perf_counter() - start:.0f} s", flush=True)

    make_loss = _entry(name).loss
    fit(model, train_x, train_y, epochs, lr=_entry(name).lr, seed=seed, on_epoch=report,
        loss_fn=None if make_loss is None else make_loss(model))
    out = out or checkpoint_path(name)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().contiguous().half() if v.is_floating_point() else v
                for k, v in model.state_dict().items()}, out)
    seconds = time.perf_counter() - start
    saved = load_model(name, pretrained=False)
    saved.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in torch.load(out, weights_only=True).items()})
    acc = scores(name, saved, test_x, test_y)
    print(f"{name}: saved {out} ({out.stat().st_size / 1e6:.2f} MB); test {_shown(acc)} on "
          f"{test_size} scenes; {seconds:.0f} s", flush=True)
    return acc, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=list(DEFAULTS))
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--train-size", type=int)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="default: the packaged weights/NAME.pt")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    epochs, train_size = DEFAULTS[args.name]
    train(args.name, args.epochs or epochs, args.train_size or train_size, args.test_size,
          args.out)


if __name__ == "__main__":
    main()
