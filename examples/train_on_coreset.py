"""Train with a plain torchvision ImageFolder on the coreset of an
`unseen-fast prune` run, found by the paths in the run's coreset.txt (a DALI
`file_list`: "relative/path label" lines). The run's coreset.npy holds
sample ids: positions in the run's own index.txt, which is ImageFolder's
order (sorted class folders, sorted files) unless --skip-bad left files out,
so paths are the safe key.

    unseen-fast prune --data DIR --prune-rate 0.3 --out RUN
    python examples/train_on_coreset.py --data DIR --run RUN [--epochs 1]
"""
import argparse
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder
from torchvision.transforms import v2


def coreset_subset(data: str, run: str) -> Subset:
    """The coreset as a Subset of ImageFolder(data), checked against the run's file list."""
    dataset = ImageFolder(data, transform=v2.Compose([
        v2.PILToTensor(), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]))
    listed = [line.rsplit(" ", 1)[0] for line in (Path(run) / "coreset.txt").read_text().splitlines()]
    position = {Path(path).relative_to(data).as_posix(): i for i, (path, _) in enumerate(dataset.samples)}
    missing = [path for path in listed if path not in position]
    if missing:
        raise SystemExit(f"{data} lacks {len(missing)} of the coreset's files (e.g. {missing[0]}); "
                         f"was the run pruned with --data {data}?")
    return Subset(dataset, [position[path] for path in listed])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the ImageFolder root the run pruned")
    parser.add_argument("--run", required=True, help="the prune run folder")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    subset = coreset_subset(args.data, args.run)
    loader = DataLoader(subset, batch_size=64, shuffle=True, num_workers=0)
    classes = len(subset.dataset.classes)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(args.epochs):
        seen = 0
        for images, labels in loader:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(labels)
        print(f"epoch {epoch + 1}: trained on {seen} coreset images of {len(subset.dataset)}")


if __name__ == "__main__":
    main()
