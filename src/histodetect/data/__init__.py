"""Reading, packing, checking and splitting patch data."""
