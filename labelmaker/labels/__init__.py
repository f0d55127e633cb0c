"""Label spaces (unified, ScanNet200, NYU40, ScanNet20, ADE20K, COCO-panoptic) and mappings.

All classes, ids, synsets, colours and mappings come from the CSV tables in ``data/``; see
``README.md`` in this folder.
"""

from labelmaker.labels.spaces import (
    SPACES,
    UNKNOWN,
    LabelMapping,
    LabelSpace,
    LabelTableError,
    UnifiedSpace,
    class_aliases,
    class_prior,
    classes_json,
    label_space,
    mapping_from_unified,
    mapping_to_unified,
    unified_space,
    unified_to,
)

__all__ = [
    "SPACES",
    "UNKNOWN",
    "LabelMapping",
    "LabelSpace",
    "LabelTableError",
    "UnifiedSpace",
    "class_aliases",
    "class_prior",
    "classes_json",
    "label_space",
    "mapping_from_unified",
    "mapping_to_unified",
    "unified_space",
    "unified_to",
]
