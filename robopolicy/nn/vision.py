"""Image observation encoder: ResNet-18 trunk with GroupNorm, spatial softmax keypoints, linear head.

Follows robomimic's VisualCore as Diffusion Policy configures it: trained from scratch (no pretrained
weights are downloadable here, and the paper found scratch ResNet-18 best), BatchNorm replaced by
GroupNorm (EMA averages badly through BatchNorm statistics), 32 keypoints, a 64-d feature per camera.
Random crop while training, centre crop at test time.
"""

import torch
import torch.nn.functional as F
from torch import nn


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(channels // 16, channels)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = _group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = _group_norm(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _group_norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + (x if self.down is None else self.down(x)))


class ResNet18Trunk(nn.Sequential):
    """(B, 3, h, w) -> (B, 512, h/32, w/32), torchvision's ResNet-18 layout without the pooling head."""

    def __init__(self, in_channels: int = 3):
        layers = [nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), _group_norm(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        c_in = 64
        for c_out, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        super().__init__(*layers)


class SpatialSoftmax(nn.Module):
    """(B, C, h, w) -> (B, 2K): expected image coordinates of K learned keypoint heat maps."""

    def __init__(self, channels: int, height: int, width: int, num_keypoints: int = 32):
        super().__init__()
        self.keypoints = nn.Conv2d(channels, num_keypoints, 1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.flatten(), ys.flatten()], dim=-1), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        heat = self.keypoints(features).flatten(2)  # (B, K, h*w)
        return (heat.softmax(-1) @ self.grid).flatten(1)


class ImageEncoder(nn.Module):
    """uint8-normalised images (B, 3, H, W) in [-1, 1] -> (B, feature_dim).

    Crops to `crop_shape`: a random window per image while training, the centre at evaluation.
    """

    def __init__(self, image_shape: tuple[int, int], crop_shape: tuple[int, int] | None, feature_dim: int = 64,
                 num_keypoints: int = 32):
        super().__init__()
        self.crop_shape = tuple(crop_shape) if crop_shape else None
        h, w = self.crop_shape or tuple(image_shape)
        self.trunk = ResNet18Trunk()
        with torch.no_grad():
            fh, fw = self.trunk(torch.zeros(1, 3, h, w)).shape[-2:]
        self.pool = SpatialSoftmax(512, fh, fw, num_keypoints)
        self.head = nn.Linear(2 * num_keypoints, feature_dim)

    def crop(self, images: torch.Tensor) -> torch.Tensor:
        if self.crop_shape is None:
            return images
        ch, cw = self.crop_shape
        _, _, h, w = images.shape
        if not self.training:
            top, left = (h - ch) // 2, (w - cw) // 2
            return images[:, :, top : top + ch, left : left + cw]
        # One random window per image, gathered in a single indexing op instead of a Python loop.
        b = images.shape[0]
        tops = torch.randint(0, h - ch + 1, (b,), device=images.device)
        lefts = torch.randint(0, w - cw + 1, (b,), device=images.device)
        rows = (tops[:, None] + torch.arange(ch, device=images.device))[:, None, :, None]
        cols = (lefts[:, None] + torch.arange(cw, device=images.device))[:, None, None, :]
        batch = torch.arange(b, device=images.device)[:, None, None, None]
        chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        return images[batch, chans, rows, cols]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.trunk(self.crop(images))))
