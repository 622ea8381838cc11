"""Shared by the ablation-diff tests: a resolved config flattened to {dotted path: leaf value}."""
from __future__ import annotations


def flat(node, prefix: str = "") -> dict:
    """A resolved config as {dotted path: leaf value} (lists by index: ``a.0.b``; empty containers kept)."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    if isinstance(node, (list, tuple)):
        out = {}
        for i, v in enumerate(node):
            out.update(flat(v, f"{prefix}{i}."))
        return out or {prefix[:-1]: []}
    return {prefix[:-1]: node}
