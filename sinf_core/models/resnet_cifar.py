"""CIFAR ResNets (He et al. 2016, depth 6n+2) with BasicBlocks, and a CIFAR-style bottleneck ResNet-50.

Module names follow the public pytorch-cifar-models release (``conv1``, ``bn1``,
``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``, ``layer{2,3}.0.downsample.{0,1}``, ``fc``).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import PrunableLayer, SinfModel


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class _Stem(nn.Module):
    """conv1 -> bn1 -> relu, sharing the parent's modules."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class CifarResNet(SinfModel):
    """ResNet for 32x32 inputs: 3x3 stem, no max-pool, stages of ``widths``, global pool, fc."""

    def __init__(self, block: type, layers: list[int], widths: list[int], num_classes: int = 100):
        super().__init__()
        self.num_classes = num_classes
        self.inplanes = widths[0]
        self.conv1 = conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        for i, (n, w) in enumerate(zip(layers, widths)):
            stage = self._make_layer(block, w, n, stride=1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", stage)
            stages.append(stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        # A plain list: the units are views of modules registered above, not new parameters.
        self._unit_list = [("stem", _Stem(self.conv1, self.bn1))]
        for i, stage in enumerate(stages):
            for j, blk in enumerate(stage):
                self._unit_list.append((f"layer{i + 1}.{j}", blk))

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(h), 1))

    def head_module(self) -> nn.Module:
        return nn.Sequential(self.avgpool, nn.Flatten(1), self.fc)

    def classifier_layer(self) -> nn.Linear:
        return self.fc

    def prunable_layers(self) -> list[PrunableLayer]:
        out = []
        for u, (name, unit) in enumerate(self._unit_list):
            if isinstance(unit, BasicBlock):
                out.append(PrunableLayer(f"{name}.conv1", unit.conv1, unit.bn1, u, "basic", unit.conv2, unit.bn2))
            elif isinstance(unit, Bottleneck):
                out.append(PrunableLayer(f"{name}.conv1", unit.conv1, unit.bn1, u, "bottleneck1", unit.conv2, unit.bn2))
                out.append(PrunableLayer(f"{name}.conv2", unit.conv2, unit.bn2, u, "bottleneck2", unit.conv3, unit.bn3))
        return out


def cifar_resnet(depth: int, num_classes: int = 100) -> CifarResNet:
    n = (depth - 2) // 6
    return CifarResNet(BasicBlock, [n, n, n], [16, 32, 64], num_classes)


def cifar_resnet50(num_classes: int = 100) -> CifarResNet:
    return CifarResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], num_classes)
