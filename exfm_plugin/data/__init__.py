"""HDF5 day files (schema, atomic writer, reader) and a FuxiCTR data loader over them."""
from .dayfile import (
    FM_PRED,
    SCHEMA_VERSION,
    DayFileError,
    narrowest_int_dtype,
    open_day_file,
    read_day_attrs,
    read_day_columns,
    write_day_file,
    write_fm_supervision,
)
from .loader import H5DataLoader

__all__ = [
    "FM_PRED", "SCHEMA_VERSION", "DayFileError", "H5DataLoader", "narrowest_int_dtype",
    "open_day_file", "read_day_attrs", "read_day_columns", "write_day_file", "write_fm_supervision",
]
