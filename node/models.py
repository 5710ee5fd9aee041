"""Model builders for the tasks that read datasets from files (node/tasks.py): a CNN for
images, an MLP for flat features, each built from the input shape and the class count.

The CNN is sized for MNIST (1x28x28) and CIFAR-10 (3x32x32) on CPUs: three 3x3 conv layers
(16, 32, 64 channels, each followed by ReLU and a 2x2 max-pool while the image is at least
2 pixels wide), then one wide hidden layer (1024) and the classifier. At 3x32x32 and 10
classes it has 1,083,434 parameters, most in the wide layer, so the vectors the protocol
agrees on are realistically large while a batch of 32 stays cheap (~20 ms forward and
backward on one CPU thread); at 1x28x28, 624,394 (~15 ms).
"""

from __future__ import annotations

from typing import Final

from torch import nn

CNN_CHANNELS: Final = (16, 32, 64)
CNN_HIDDEN: Final = 1024
MLP_HIDDEN: Final = 256


def image_cnn(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The CNN for images of ``input_shape`` = (channels, height, width)."""
    channels, height, width = input_shape
    layers: list[nn.Module] = []
    for out in CNN_CHANNELS:
        layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.ReLU()]
        if min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        channels = out
    layers += [
        nn.Flatten(),
        nn.Linear(channels * height * width, CNN_HIDDEN),
        nn.ReLU(),
        nn.Linear(CNN_HIDDEN, num_classes),
    ]
    return nn.Sequential(*layers)


def mlp(features: int, num_classes: int) -> nn.Module:
    """A one-hidden-layer MLP for flat feature vectors."""
    return nn.Sequential(
        nn.Linear(features, MLP_HIDDEN), nn.ReLU(), nn.Linear(MLP_HIDDEN, num_classes)
    )
