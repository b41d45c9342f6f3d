"""Prints, after the pytest-benchmark table, each alternative's median time
divided by ours (>1: ours is faster) and the rate (GB/s of input read, or
items per second when a benchmark sets extra_info["items"]), per group."""
from collections import defaultdict


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups = defaultdict(list)
    for bench in session.benchmarks:
        if not bench.has_error:
            groups[bench.group].append(bench)
    terminalreporter.section("unseen-fast: speed-up of ours over each alternative (same run)")
    for group, benches in groups.items():
        ours = [b for b in benches if b.extra_info.get("role") == "ours"]
        for mine in ours:
            terminalreporter.write_line(f"[{group}] {mine.name}: median {mine['median'] * 1e3:.2f} ms{_rate(mine)}")
            for other in benches:
                if other is mine or other.extra_info.get("role") == "ours":
                    continue
                ratio = other["median"] / mine["median"]
                terminalreporter.write_line(
                    f"    vs {other.name}: {other['median'] * 1e3:.2f} ms{_rate(other)} -> ours {ratio:.2f}x")


def _rate(bench):
    nbytes = bench.extra_info.get("bytes")
    items = bench.extra_info.get("items")
    if items:
        return f" ({items / bench['median']:,.0f} {bench.extra_info.get('unit', 'items')}/s)"
    return f" ({nbytes / bench['median'] / 1e9:.1f} GB/s)" if nbytes else ""
