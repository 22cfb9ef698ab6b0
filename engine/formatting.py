"""Text the CLI and the demo print: a ranked table of matches."""
from __future__ import annotations


def format_matches(matches) -> str:
    if not matches:
        return "no matches"
    lines = [f"{'rank':>4}  {'name':<24} {'score':>9} {'overlap':>7}  evidence"]
    for i, m in enumerate(matches):
        ev = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.evidence.items())
        lines.append(f"{i + 1:>4}  {m.name:<24} {m.score:>9.4f} {m.overlap:>7.2f}  {ev}")
        shared = ", ".join(t if t == s else f"{t}~{s}" for t, s, _ in m.features[:8])
        more = f" (+{len(m.features) - 8} more)" if len(m.features) > 8 else ""
        lines.append(f"{'':>6}shared: {shared}{more}")
    return "\n".join(lines)
