"""Self cost (instructions) per crate and per function of a callgrind dump.

    python3 benches/callgrind_self.py DUMP [DELIVERIES [TOP]]

callgrind_annotate attributes the whole of a dump taken with
`callgrind_control -z` / `-d` in a threaded program to `clone`, so this reads
the dump's cost lines itself: a cost line right after `calls=` is a call's
inclusive cost, and every other cost line is the current function's own.
Figures are divided by DELIVERIES (default 1) to give instructions per
delivery.
"""
import collections
import re
import sys

CRATES = ("game_session", "bare_relay", "h2", "hyper", "tokio", "tonic", "prost", "futures", "bytes",
          "http_body", "tower", "std", "core", "alloc", "hashbrown", "uuid")


def self_costs(path):
    names, costs = {}, collections.Counter()
    fn, in_call = None, False
    for line in open(path):
        line = line.rstrip("\n")
        m = re.match(r"^c?fn=\((\d+)\)(?: (.*))?$", line)
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            if line.startswith("fn="):
                fn = names.get(m.group(1), m.group(1))
            continue
        if line.startswith("calls="):
            in_call = True
            continue
        m = re.match(r"^(?:[+-]?\d+|\*) (\d+)$", line)
        if m:
            if in_call:
                in_call = False
            else:
                costs[fn] += int(m.group(1))
    return costs


def crate(name):
    """The crate of a demangled Rust name (`<h2::x as y>::z` is h2's), or the C symbol family."""
    path = name[1:] if name.startswith("<") else name
    head = re.split(r"::|<| ", path, maxsplit=1)[0]
    head = re.sub(r"_(util|core|stream)$", "", head)  # hyper_util is hyper's, tokio_stream tokio's
    if head in CRATES:
        return head
    if head.startswith("__mem") or head.startswith("memcpy") or head.startswith("memmove"):
        return "memcpy/memmove"
    if head in ("malloc", "free", "cfree", "realloc") or head.startswith("_int_"):
        return "malloc"
    return "other"


def main():
    costs = self_costs(sys.argv[1])
    deliveries = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    total = sum(costs.values())
    crates = collections.Counter()
    for name, cost in costs.items():
        crates[crate(name)] += cost
    print(f"total {total} instructions, {total / deliveries:.0f} per delivery")
    print()
    for name, cost in crates.most_common():
        print(f"{cost / total * 100:5.1f}% {cost / deliveries:7.0f}/delivery  {name}")
    print()
    for name, cost in costs.most_common(top):
        print(f"{cost / total * 100:5.1f}% {cost / deliveries:7.0f}/delivery  {name[:160]}")


if __name__ == "__main__":
    main()
