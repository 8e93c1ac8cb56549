"""Write tests/data/torchvision_rotation.npz: MNIST test images rotated by torchvision itself.

test_augment.py checks jaxmnist's rotation against this file pixel for pixel, so CI needs no
torch. Regenerate (needs torch + torchvision):
    python scripts/torchvision_rotation_reference.py --idx-dir ../shared/data/mnist-idx
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from jaxmnist.data import load_idx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx-dir", required=True)
    parser.add_argument("--out", default=str(Path(__file__).parents[1] / "tests/data/torchvision_rotation.npz"))
    args = parser.parse_args()
    images = load_idx(args.idx_dir).test_images[:32]
    # Both signs, the lab's range and beyond it, and angles that are not round numbers.
    angles = np.concatenate([[0.0, 90.0, -45.0, 180.0], np.linspace(-10.0, 10.0, 28)]).astype(np.float32)
    rotated = np.stack([
        F.rotate(torch.from_numpy(image[None].copy()), float(angle), InterpolationMode.NEAREST, fill=0)[0].numpy()
        for image, angle in zip(images, angles)
    ])
    np.savez_compressed(args.out, images=images, angles=angles, rotated=rotated)


if __name__ == "__main__":
    main()
