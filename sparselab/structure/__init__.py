"""Model structure shared by every structured method: blocks, gates, masks, parameter counts, compaction."""
from .compact import compact_spec, compact_stats, compact_vit, export_onnx, load_compact, pad_masks, save_compact
from .gates import Gates
from .taps import ResidualTaps
from .unstructured import apply_masks, magnitude_masks, prunable_weights, sparsity
from .vit import BLOCK_GATES, GATES, BlockInfo, ViTStructure

__all__ = ["ViTStructure", "BlockInfo", "Gates", "ResidualTaps", "GATES", "BLOCK_GATES", "compact_vit", "pad_masks",
           "compact_spec", "compact_stats", "save_compact", "load_compact", "export_onnx", "prunable_weights",
           "magnitude_masks", "apply_masks", "sparsity"]
