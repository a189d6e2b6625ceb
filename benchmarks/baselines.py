"""Our baselines against the peers' implementations of the same methods, in one run.

- Score-CAM: ours (``variant="score-cam"``, the peers' convention) vs pytorch-grad-cam
  (``grad-cam``) and TorchCAM when installed; ResNet-18 and VGG16-bn.
- LRP: ours vs Captum's ``LRP`` and Zennit's ``EpsilonPlus`` on VGG16.

Each row: median seconds of ``--repeats`` runs and the ratio to the fastest peer in its group.

    python benchmarks/baselines.py --batch 4 --size 224
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
from collections.abc import Callable

import torch
import torchvision
from timing import median_time
from torch import nn

from captum_fgcam import LRP, EpsilonRule, ScoreCam, ZPlusRule, ZRule
from captum_fgcam.propagation import FedByInput, Kind


def score_cam_rows(name: str, x: torch.Tensor, target: list[int], batch_size: int
                   ) -> list[tuple[str, Callable[[], object]]]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    layer = model.layer4 if name.startswith("resnet") else model.features[-1]
    ours = ScoreCam(model, layer, batch_size=batch_size, variant="score-cam")
    rows = [("captum-fgcam ScoreCam", lambda: ours.attribute(x, target))]
    if importlib.util.find_spec("pytorch_grad_cam"):
        from pytorch_grad_cam import ScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def pgc() -> None:
            with ScoreCAM(model=model, target_layers=[layer]) as cam:
                cam.batch_size = batch_size
                cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in target])

        rows.append(("pytorch-grad-cam ScoreCAM", pgc))
    if importlib.util.find_spec("torchcam"):
        from torchcam.methods import ScoreCAM as TorchCamScoreCAM

        def torchcam() -> None:
            with TorchCamScoreCAM(model, layer, batch_size=batch_size) as extractor:
                with torch.no_grad():
                    out = model(x)
                extractor(target, out)

        rows.append(("TorchCAM ScoreCAM", torchcam))
    return rows


def lrp_rows(x: torch.Tensor, target: torch.Tensor) -> list[tuple[str, Callable[[], object]]]:
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    ours = LRP(model, model.features[0], rules={
        (FedByInput(), nn.Conv2d): ZPlusRule(1e-6), nn.Linear: EpsilonRule(1e-6),
        Kind("sum"): ZRule(1e-6)})
    rows = [("captum-fgcam LRP", lambda: ours.attribute(x, target,
                                                         attribute_to_layer_input=True))]
    from captum.attr import LRP as CaptumLRP

    captum_model = copy.deepcopy(model)
    rows.append(("Captum LRP", lambda: CaptumLRP(captum_model).attribute(x, target=target)))
    if importlib.util.find_spec("zennit"):
        from zennit.composites import EpsilonPlus

        def zennit() -> None:
            xi = x.clone().requires_grad_(True)
            with EpsilonPlus(epsilon=1e-6, stabilizer=1e-6).context(model) as modified:
                out = modified(xi)
                start = torch.zeros_like(out).scatter(1, target[:, None],
                                                      out.gather(1, target[:, None]))
                torch.autograd.grad(out, xi, start)

        rows.append(("Zennit EpsilonPlus", zennit))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--score-batch-size", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=["resnet18", "vgg16_bn"])
    args = parser.parse_args()
    x = torch.randn(args.batch, 3, args.size, args.size)
    target = [i % 1000 for i in range(args.batch)]
    groups = [(f"Score-CAM, {name}", score_cam_rows(name, x, target, args.score_batch_size))
              for name in args.models]
    groups.append(("LRP, VGG16", lrp_rows(x, torch.tensor(target))))
    print(f"batch {args.batch}, {args.size}x{args.size}, {torch.get_num_threads()} threads\n")
    print("| group | implementation | seconds | ratio to fastest peer |\n|---|---|---:|---:|")
    for group, rows in groups:
        times = {label: median_time(fn, args.repeats, warm_up=False) for label, fn in rows}
        peers = [t for label, t in times.items() if not label.startswith("captum-fgcam")]
        best = min(peers) if peers else float("nan")
        for label, t in times.items():
            print(f"| {group} | {label} | {t:.2f} | {t / best:.2f} |", flush=True)


if __name__ == "__main__":
    main()
