"""The course lab's PyTorch MNIST script, rewritten from its report: the baseline jaxmnist reproduces.

    python reference/lab_pytorch.py --root DIR     # DIR/MNIST/raw holds the four uncompressed IDX files

Needs torch and torchvision (the figures in docs/ used torch 2.14.1, torchvision 0.29.1, CPU), and
nothing of jaxmnist. What the lab specifies, and nothing more:
- data: torchvision's MNIST; RandomRotation(10) (a fresh angle in [-10, 10] degrees per image per
  load, nearest, black corners), ToTensor(), Normalize(0.1307, 0.3081); batches of 64, shuffled,
  2 loader workers, the last batch of 32 kept;
- model: conv 1->16 5x5 pad 2, ReLU, max-pool 2; conv 16->32 5x5 pad 2, ReLU, max-pool 2;
  linear 1568->10 (28,938 parameters, PyTorch's default initialisation);
- training: cross-entropy, Adam(1e-3, betas (0.9, 0.999)), StepLR(5, 0.1) stepped once per epoch,
  5 epochs, a log line every 100 batches, the test accuracy after each epoch, the best model saved.
The lab's report rotates the test images too; this script tests on unrotated images, as jaxmnist
does, unless --rotated-test asks for the report's quirk. Its last line is one JSON object (seconds
and accuracy per epoch), which scripts/bench.py and scripts/gpu_check.sh read.
"""

from __future__ import annotations

import argparse
import json
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding MNIST/raw/*-ubyte (uncompressed)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed (CPU runs repeat; GPU runs may not)")
    parser.add_argument("--rotated-test", action="store_true", help="rotate the test images too, as the report did")
    parser.add_argument("--save", default="lab_pytorch_best.pt", help="where the best model's state_dict goes")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # Imported after the flags, so that --help answers without torch installed.
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    class CNN(nn.Module):
        """The lab's two-conv network; forward returns logits."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Sequential(nn.Conv2d(1, 16, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(2))   # 28x28 -> 14x14
            self.conv2 = nn.Sequential(nn.Conv2d(16, 32, 5, 1, 2), nn.ReLU(), nn.MaxPool2d(2))  # 14x14 -> 7x7
            self.fc = nn.Linear(32 * 7 * 7, 10)

        def forward(self, x):
            x = self.conv2(self.conv1(x))
            return self.fc(x.flatten(1))  # NCHW flattened channel-major, as the lab's view() does

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print("Using device:", device)
    to_normalized = [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
    train_transform = transforms.Compose([transforms.RandomRotation(10), *to_normalized])
    test_transform = train_transform if args.rotated_test else transforms.Compose(to_normalized)
    train_set = datasets.MNIST(args.root, train=True, download=False, transform=train_transform)
    test_set = datasets.MNIST(args.root, train=False, download=False, transform=test_transform)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    test_loader = DataLoader(test_set, batch_size=args.batch_size, shuffle=False)

    model = CNN().to(device)
    loss_function = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.1)

    best, epochs, start = 0.0, [], time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        for batch, (images, labels) in enumerate(train_loader):
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = loss_function(model(images), labels)
            loss.backward()
            optimizer.step()
            if batch % 100 == 0:
                print(f"Train Epoch: {epoch} [{batch * len(images)}/{len(train_set)} "
                      f"({100.0 * batch / len(train_loader):.0f}%)]\tLoss: {loss.item():.6f}")
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize()  # the clock must not stop before the GPU does
        train_seconds = time.perf_counter() - epoch_start

        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in test_loader:
                predictions = model(images.to(device)).argmax(dim=1)
                correct += (predictions == labels.to(device)).sum().item()
        accuracy = 100.0 * correct / len(test_set)
        print(f"\nTest Accuracy: {correct}/{len(test_set)} ({accuracy:.2f}%)\n")
        if accuracy > best:
            best = accuracy
            torch.save(model.state_dict(), args.save)
            print(f"Best model saved with accuracy: {best:.2f}%")
        epochs.append({"epoch": epoch, "train_s": round(train_seconds, 3),
                       "epoch_s": round(time.perf_counter() - epoch_start, 3), "acc": accuracy})
    print(json.dumps({"device": str(device), "total_s": round(time.perf_counter() - start, 3),
                      "best": best, "epochs": epochs}))


if __name__ == "__main__":
    main()
