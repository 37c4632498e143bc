"""File formats every layer reads and writes: the bottom layer, importing no stage and no model."""
