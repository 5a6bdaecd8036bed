"""Label sets as hashable values, and label-selector matching."""

from __future__ import annotations

from typing import Mapping

Labels = tuple[tuple[str, str], ...]


def freeze_labels(mapping: Mapping[str, str] | None) -> Labels:
    """A sorted tuple of (key, value) pairs: equal label sets compare equal."""
    if not mapping:
        return ()
    return tuple(sorted((str(k), str(v)) for k, v in mapping.items()))


def labels_dict(labels: Labels) -> dict[str, str]:
    return dict(labels)


def selector_matches(selector: Labels, labels: Labels) -> bool:
    """True when every (key, value) of `selector` is in `labels` (an empty selector matches all)."""
    if not selector:
        return True
    have = dict(labels)
    return all(have.get(k) == v for k, v in selector)
