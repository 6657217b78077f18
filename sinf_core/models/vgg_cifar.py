"""VGG with BatchNorm for 32x32 inputs, in the layout of the public pytorch-cifar-models release:
``features.N`` (conv with bias, BN, ReLU, max-pools) and ``classifier.{0,3,6}`` (512-512-classes)."""

from __future__ import annotations

import torch
from torch import nn

from .base import PrunableLayer, SinfModel

CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class CifarVGG(SinfModel):
    """``width`` scales every conv width (1.0 = the public layout)."""

    def __init__(self, cfg: list, num_classes: int = 100, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        cin = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                cout = max(1, int(round(v * width)))
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
        self.features = nn.Sequential(*layers)
        hidden = max(1, int(round(512 * width)))
        self.classifier = nn.Sequential(
            nn.Linear(cin, hidden), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # One unit per conv: conv, bn, relu and a following max-pool, as views of ``features``.
        self._unit_list = []
        self._conv_at: list[int] = []
        i = 0
        feats = list(self.features)
        while i < len(feats):
            start = i
            i += 3
            if i < len(feats) and isinstance(feats[i], nn.MaxPool2d):
                i += 1
            self._conv_at.append(start)
            self._unit_list.append((f"features.{start}", self.features[start:i]))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(h, 1))

    def head_module(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(1), self.classifier)

    def classifier_layer(self) -> nn.Linear:
        return self.classifier[6]

    def prunable_layers(self) -> list[PrunableLayer]:
        """Every conv; each is read by the next conv (its BatchNorm after it), the last one by the
        classifier's first linear layer through the flatten."""
        readers = [(self.features[s], self.features[s + 1]) for s in self._conv_at[1:]]
        readers.append((self.classifier[0], None))
        return [
            PrunableLayer(f"features.{s}", self.features[s], self.features[s + 1], u, "vgg", *readers[u])
            for u, s in enumerate(self._conv_at)
        ]


def cifar_vgg(name: str, num_classes: int = 100, width: float = 1.0, dropout: float = 0.5) -> CifarVGG:
    return CifarVGG(CONFIGS[name], num_classes, width, dropout)
