"""Sample quality: a small MNIST classifier, the Frechet distance on its features, and
how many digit classes a generator covers.

FID here follows Heusel et al. ("GANs Trained by a Two Time-Scale Update Rule", 2017,
https://arxiv.org/abs/1706.08500) with the penultimate layer of a digit classifier
trained by this project in place of Inception features, so its values are comparable
only with each other, not with published FIDs.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

from train.data import load_images


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    A 1e-6 ridge on both covariances keeps the square root stable when dead relu
    features make them singular.
    """
    ridge = np.eye(len(sigma1)) * 1e-6
    sigma1, sigma2 = sigma1 + ridge, sigma2 + ridge
    covmean = linalg.sqrtm(sigma1 @ sigma2).real  # drop rounding's imaginary parts
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * covmean))


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


class DigitClassifier(nn.Module):
    """784-256-128-10 relu MLP; the 128 features before the last layer feed the FID."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 256)
        self.fc2 = nn.Linear(256, 128)
        self.out = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(x))))  # (B, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))  # (B, 10) logits


def train_classifier(x: torch.Tensor, y: torch.Tensor, epochs: int = 15, seed: int = 0) -> DigitClassifier:
    """Adam 1e-3, batch 64, on images in [0, 1]."""
    torch.manual_seed(seed)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def fid(classifier: DigitClassifier, real: torch.Tensor, fake: torch.Tensor) -> float:
    a = classifier.features(real).double().numpy()
    b = classifier.features(fake).double().numpy()
    return frechet_distance(*gaussian_fit(a), *gaussian_fit(b))


@torch.no_grad()
def class_coverage(classifier: DigitClassifier, images: torch.Tensor, confidence: float = 0.9) -> dict:
    """How the classifier labels samples: the count per class of confident predictions."""
    probs = F.softmax(classifier(images), dim=1)
    best, label = probs.max(dim=1)
    confident = label[best >= confidence]
    counts = torch.bincount(confident, minlength=10).tolist()
    return {
        "classes_present": sum(c > 0 for c in counts),
        "classes_with_1pct": sum(c >= 0.01 * len(images) for c in counts),
        "confident_fraction": len(confident) / len(images),
        "counts": counts,
    }


class Reference:
    """The yardstick every FID of this project uses: the packaged digits' split (seed 0),
    a classifier trained on its training part, the held-out digits to compare with, and
    the floor, the FID of 1,000 real training digits."""

    def __init__(self) -> None:
        split = load_images(None, seed=0)
        self.train_x, self.train_y = torch.from_numpy(split.train_x), torch.from_numpy(split.train_y)
        self.val_x, self.val_y = torch.from_numpy(split.val_x), torch.from_numpy(split.val_y)
        self.classifier = train_classifier(self.train_x, self.train_y)
        self.floor = fid(self.classifier, self.val_x, self.train_x[:1000])

    def fid(self, samples: torch.Tensor) -> float:
        """FID of `samples` (images in [0, 1]) against the held-out digits."""
        return fid(self.classifier, self.val_x, samples)


@functools.cache
def shared_reference() -> Reference:
    """This process's one `Reference`: its classifier is trained once (about 3 s), however
    many runs and reports measure with it (`make quality` trains two image models with
    `--fid-every`, then scores both)."""
    return Reference()
