"""The `unseen-fast` command line."""
from __future__ import annotations

import argparse
import json
import sys
import time


def cmd_info(args: argparse.Namespace) -> int:
    from unseen_fast import build_info

    info = build_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(key) for key in info)
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "none visible"
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Score random logits with every method, normalize, select, check against
    the float64 reference and time the fused op against eager PyTorch."""
    import torch

    from unseen_fast import ops, reference

    if args.samples < 1 or args.classes < 1:
        raise SystemExit(f"demo: need --samples >= 1 and --classes >= 1, got {args.samples}, {args.classes}")
    if not 0 < args.keep <= 1:
        raise SystemExit(f"demo: --keep must be in (0, 1], got {args.keep}")
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    logits = (torch.randn(args.samples, args.classes, generator=gen) * 3).to(device)
    labels = torch.randint(0, args.classes, (args.samples,), generator=gen).to(device)

    start = time.perf_counter()
    scores = ops.score(logits, labels, ops.METHODS)
    fused_s = time.perf_counter() - start
    start = time.perf_counter()
    expected = reference.score(logits, labels, ops.METHODS, dtype=torch.float32)
    eager_s = time.perf_counter() - start
    exact = reference.score(logits, labels, ops.METHODS)
    err = (scores.double() - exact).abs().max().item()

    k = int(args.samples * args.keep)
    entropy = scores[:, 0].contiguous()
    keep = ops.select_topk(ops.normalize(entropy), k)
    same = torch.equal(keep.cpu(), reference.select_topk(entropy, k).cpu())
    print(f"scored {args.samples} x {args.classes} logits on {device} with {len(ops.METHODS)} methods: "
          f"fused {fused_s * 1e3:.1f} ms, eager float32 PyTorch {eager_s * 1e3:.1f} ms "
          f"(first call of each, includes warm-up)")
    print(f"max |error| vs float64 reference: {err:.2e}")
    for name, col in zip(ops.METHODS, scores.T):
        print(f"  {name:<17} mean {col.mean().item():8.4f}  min {col.min().item():8.4f}  max {col.max().item():8.4f}")
    print(f"kept the {k} highest-entropy samples ({args.keep:.0%}); matches the reference selection: {same}")
    return 0 if same and err < 1e-4 else 1


def cmd_check_data(args: argparse.Namespace) -> int:
    """Decode every image; exit 1 naming each unreadable file."""
    from unseen_fast.data import open_index
    from unseen_fast.data.check import check_data, format_report

    index = open_index(args.data, file_list=args.file_list)
    report = check_data(index, workers=args.workers, progress=not args.json and sys.stderr.isatty())
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unseen-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, compiled kernels, devices, DALI")
    info.add_argument("--json", action="store_true", help="print a JSON object")
    info.set_defaults(func=cmd_info)
    demo = sub.add_parser("demo", help="score, normalize and select on random logits")
    demo.add_argument("--samples", type=int, default=100_000)
    demo.add_argument("--classes", type=int, default=100)
    demo.add_argument("--keep", type=float, default=0.7, help="fraction to select")
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    check = sub.add_parser("check-data", help="decode every image and report classes, sizes and bad files")
    check.add_argument("--data", required=True,
                       help="ImageFolder root (root/<class>/<image>), or builtin:digits")
    check.add_argument("--file-list", help="'relative/path label' lines, paths relative to --data")
    check.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU count)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=cmd_check_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    from unseen_fast.data.errors import DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DataError as err:  # a problem with the user's data: say what, no traceback
        print(f"unseen-fast {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
