"""Per-request timing, memory, token and FLOP accounting shared by all model ids."""

from .records import EfficiencyRecord, clear_records, get_record, record_request

__all__ = ["EfficiencyRecord", "clear_records", "get_record", "record_request"]
