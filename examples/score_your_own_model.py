"""UNSEEN's ops in your own loop: score your model's logits batch by batch
with ops.score, keep the scores on the device, select with ops.select_topk,
and wait for the device only once, at the end.

    python examples/score_your_own_model.py [--keep 0.7] [--device cuda]

Here "your model" is a small MLP trained for a few epochs on scikit-learn's
handwritten digits; swap in any model and DataLoader that yield
(inputs, labels) batches with sample positions.
"""
import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from unseen_fast import ops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=float, default=0.7, help="fraction of samples to keep")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    digits = load_digits()
    inputs = torch.tensor(digits.data, dtype=torch.float32) / 16
    labels = torch.tensor(digits.target, dtype=torch.int64)
    positions = torch.arange(len(labels))
    loader = DataLoader(TensorDataset(inputs, labels, positions), batch_size=256, shuffle=True,
                        generator=torch.Generator().manual_seed(0))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):  # your training, whatever it is
        for x, y, _ in loader:
            loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    # Scoring: one fused pass per batch; results stay on the device.
    model.eval()
    scores = torch.empty(len(labels), 2, device=device)  # entropy, loss
    with torch.inference_mode():
        for x, y, where in loader:
            logits = model(x.to(device))
            batch_scores = ops.score(logits, y.to(device), ["entropy", "loss"], check_labels=False)
            scores.index_copy_(0, where.to(device), batch_scores)

    # Selection: the hardest by entropy, per class in proportion to class size.
    keep = int(len(labels) * args.keep)
    importance = ops.normalize(scores[:, 0].contiguous())
    kept = ops.select_topk(importance, keep, labels=labels.to(device), balanced=True)
    kept = kept.cpu()  # the one wait for the device
    print(f"kept {len(kept)} of {len(labels)} samples; mean entropy kept "
          f"{scores[kept.to(device), 0].mean().item():.3f} vs all {scores[:, 0].mean().item():.3f}")
    return kept


if __name__ == "__main__":
    main()
