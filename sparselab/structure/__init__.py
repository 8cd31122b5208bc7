"""Model structure shared by every structured method: blocks, gates, masks, parameter counts, compaction."""
from .gates import Gates
from .vit import BLOCK_GATES, GATES, BlockInfo, ViTStructure

__all__ = ["ViTStructure", "BlockInfo", "Gates", "GATES", "BLOCK_GATES"]
