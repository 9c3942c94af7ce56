"""A YAML loader for files users write by hand (run configs, suite files): no duplicated keys, no anchors or aliases.

`yaml.safe_load` silently keeps the last of two equal keys (a typo'd override wins without a word) and expands
aliases (`&a` / `*a`), so a few hundred bytes can resolve to megabytes (the "billion laughs" alias bomb). Both are
refused here, naming the file, the line and the fix.
"""

from __future__ import annotations

from typing import Any

import yaml

from spear_mm.errors import SpearError


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases and duplicated mapping keys."""

    source = "YAML"

    def compose_node(self, parent, index):  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            raise SpearError(
                f"{self.source}, line {mark.line + 1}: YAML anchors and aliases (&name / *name) are not accepted "
                "in this file (an alias can expand a small file into a huge one); write the values out in full."
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise SpearError(
                    f"{self.source}, line {key_node.start_mark.line + 1}: YAML merge keys (<<) are not "
                    "accepted in this file; write the fields out in full."
                )
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: construct_mapping reports it
                continue
            if first is not None:
                raise SpearError(
                    f"{self.source}, line {line}: key '{key}' is given twice (first on line {first}); YAML would "
                    "silently keep the last value. Keep one of them."
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_strict_yaml(text: str, source: str) -> Any:
    """Parse `text` (read from `source`, named in errors) refusing duplicated keys, anchors and aliases."""
    loader = _StrictLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise SpearError(f"{source}: not valid YAML ({' '.join(str(exc).split())}).") from exc
    finally:
        loader.dispose()
