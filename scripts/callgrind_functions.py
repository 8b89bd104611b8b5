"""Instructions per request of each function of a callgrind profile, as scripts/instructions.sh
compares them between the sides of a run."""
import re
import subprocess


def functions(path, requests):
    """Instructions per request by function (`file:function`, as callgrind_annotate names it)."""
    text = subprocess.run(["callgrind_annotate", path], capture_output=True, text=True).stdout
    table = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([\s\d.]+%\)\s+(.*)", line)
        if m:
            table[m.group(2)] = int(m.group(1).replace(",", "")) / requests
    return table


def changes(before, after):
    """`(difference per request, function)` for every function of either profile, the largest
    increase first."""
    keys = (set(before) | set(after)) - {k for k in set(before) | set(after) if "PROGRAM TOTALS" in k}
    return sorted(((after.get(k, 0) - before.get(k, 0), k) for k in keys), reverse=True)


def show(rows):
    """Prints `(difference, function)` rows, the function without its file and object."""
    for d, k in rows:
        name = re.sub(r"\s*\[[^\]]*\]$", "", k).split(":", 1)[-1]
        print(f"{d:8.0f}  {name[:110]}")
